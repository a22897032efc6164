"""Golden results that stay strict on the machine that recorded them and portable everywhere else.

Floating-point training is not bit-identical across CPU kernels: oneMKL and oneDNN pick other code
paths on another vendor or vector width (AVX2, AVX-512, the scalar ``default``), so a short search
recorded on one machine gives another front on the next. A golden recording is therefore keyed by
the machine class that made it (:func:`machine_key`). On a machine class with a recording the
comparison is exact -- the guard of "no behaviour change" for every refactor; on any other the
result must satisfy what holds everywhere (:func:`portable_problems`): a valid non-dominated front,
a front size and hypervolume within the stated tolerance of the recordings.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

# How far a kernel change may move the short test search. Measured: the recordings of this file
# (AMD AVX-512, AVX2 and default kernels) and an Intel AVX-512 run (hypervolume 0.0649 after
# generation 3 vs 0.0712 recorded on AMD: -9 %). A 2-epoch supernet on 256 images sits near chance,
# so small numerical differences move whole subnets on or off the front.
HV_TOLERANCE = 0.25  # relative, around the range of the recorded final hypervolumes
FRONT_SIZE_SLACK = 2  # members, around the range of the recorded front sizes


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` value of /proc/cpuinfo (None where there is no such file or field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... from /proc/cpuinfo (the processor string elsewhere)."""
    return _cpuinfo("vendor_id") or platform.processor() or "unknown"


def cpu_isa() -> str:
    """The widest vector instruction set the CPU itself has (``cpuAVX512``, ``cpuAVX2``, ``cpuSSE``).

    ``ATEN_CPU_CAPABILITY`` lowers only ATen's own kernels; oneDNN and oneMKL still dispatch on the
    hardware, so an AVX-512 CPU told ``avx2`` does not compute what a CPU without AVX-512 computes (seen
    here: the AVX2 recording made on an AVX-512 EPYC failed exactly on an AVX2-only EPYC)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "cpu" + (platform.machine() or "unknown")
    flags = set(flags.split())
    return "cpuAVX512" if "avx512f" in flags else "cpuAVX2" if "avx2" in flags else "cpuSSE"


def machine_key() -> str:
    """The machine class a floating-point training result is exact on: architecture, CPU vendor, the
    CPU's own vector width (:func:`cpu_isa`), the kernel capability ATen dispatches to
    (``ATEN_CPU_CAPABILITY`` lowers it) and torch's version."""
    import torch

    return (f"{platform.machine()}-{cpu_vendor()}-{cpu_isa()}-{torch.backends.cpu.get_cpu_capability()}"
            f"-torch{torch.__version__}")


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def record(path: Path, key: str, got: dict[str, Any]) -> None:
    doc = read(path) if path.exists() else {}
    doc.setdefault("recordings", {})[key] = got
    doc["recordings"] = dict(sorted(doc["recordings"].items()))
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _dominates(a: dict, b: dict, objectives: dict[str, int]) -> bool:
    va = [sign * a[o] for o, sign in objectives.items()]
    vb = [sign * b[o] for o, sign in objectives.items()]
    return all(x <= y for x, y in zip(va, vb)) and any(x < y for x, y in zip(va, vb))


def portable_problems(got: dict[str, Any], recordings: dict[str, dict[str, Any]],
                      objectives: dict[str, int], max_evaluations: int) -> list[str]:
    """What is wrong with ``got`` by the rules that hold on every machine (empty: nothing).

    ``objectives`` maps each searched objective to +1 (minimised) or -1 (maximised).
    """
    problems = []
    front, hv = got["front"], got["hypervolume"]
    if not front:
        problems.append("the front is empty")
    if not 0 <= got["knee"] < max(len(front), 1):
        problems.append(f"knee {got['knee']} is not a member of a front of {len(front)}")
    for a in front:
        for b in front:
            if _dominates(a, b, objectives):
                problems.append(f"{a['genome']} dominates {b['genome']}: the front is not non-dominated")
    for r in front:
        for k in ("clean_acc", "adv_acc", "final_clean_acc", "final_adv_acc"):
            if not 0 <= r[k] <= 100:
                problems.append(f"{r['genome']}: {k} {r[k]} is not a percentage")
    if not len(front) <= got["evaluations"] <= max_evaluations:
        problems.append(f"{got['evaluations']} evaluations, expected {len(front)}..{max_evaluations}")
    if any(b < a - 1e-12 for a, b in zip(hv, hv[1:])):
        problems.append(f"hypervolume fell between generations: {hv}")
    if recordings:
        sizes = [len(r["front"]) for r in recordings.values()]
        lo, hi = min(sizes) - FRONT_SIZE_SLACK, max(sizes) + FRONT_SIZE_SLACK
        if not lo <= len(front) <= hi:
            problems.append(f"front of {len(front)} members, recorded {sizes} (allowed {lo}..{hi})")
        finals = [r["hypervolume"][-1] for r in recordings.values()]
        lo, hi = min(finals) * (1 - HV_TOLERANCE), max(finals) * (1 + HV_TOLERANCE)
        if not (hv and lo <= hv[-1] <= hi):
            seen = ", ".join(f"{f:.4f}" for f in finals)
            problems.append(f"final hypervolume {hv[-1] if hv else None} outside {lo:.4f}..{hi:.4f} "
                            f"(recorded {seen}, tolerance {HV_TOLERANCE:.0%})")
        if any(len(r["hypervolume"]) != len(hv) for r in recordings.values()):
            problems.append("a different number of generations than recorded")
    return problems
