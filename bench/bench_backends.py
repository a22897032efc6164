"""Host latency of the same subnets on every backend, and ``nasctl profile`` against LiteRT's own tool.

For three subnets of a front (``--run``: smallest, median and largest by parameters) or, by default,
three digits subnets (the fine-tuned front members BENCHMARKS.md reports) and three ``tam`` subnets
at 32x32 (smallest, a seeded random one, largest), it writes each model as ONNX, float32 and
full-int8 TFLite (the profiler's conversion chain) and TorchScript, then times every file with
``nasctl profile FILE --json`` (a subprocess, as a user runs it) and the TFLite files also with
``python -m ai_edge_litert.tools.benchmark_litert_model`` at the same thread count. Weights are
randomly initialised: latency does not depend on their values.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_backends.py --out bench/results/backends.json
    python bench/bench_backends.py --run runs/search/<run> --space digits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DIGITS = (
    "stem_c8-skip-skip-conv_k3_c16-skip-skip",  # 1,442 params
    "stem_c16-conv_k3_c16-skip-conv_k3_c32-skip-skip",  # the knee's size class
    "stem_c32-conv_k3_c32-conv_k3_c32-conv_k3_c64-conv_k3_c64-conv_k3_c64",
)


def genomes(args) -> list[tuple[str, str]]:
    """(space name, genome) pairs to time."""
    from nasctl.nas.space import load_space
    from nasctl.profiling import sample_genomes

    if args.run:
        doc = json.loads((Path(args.run) / "pareto.json").read_text())
        front = sorted(doc["front"], key=lambda r: r["params"])
        picks = [front[0], front[len(front) // 2], front[-1]]
        return [(args.space, r["genome"]) for r in picks]
    tam = load_space("tam")
    mid = sample_genomes(tam, 3, seed=0)[2]
    return [("digits", g) for g in DIGITS] + [
        ("tam", g.encode()) for g in (tam.smallest(), mid, tam.largest())
    ]


def write_models(space_name: str, genome: str, out: Path) -> dict[str, Path]:
    import torch

    from nasctl.export.onnx import export_onnx
    from nasctl.export.prepare import fold_batchnorm
    from nasctl.nas.supernet import build_subnet
    from nasctl.profiling.convert import ToConvert, _simplify, convert_modules
    from nasctl.profiling.tasks import resolve_space

    space, info = resolve_space(space_name, None)
    shape = (1, info.in_channels, info.resolution, info.resolution)

    def build():
        return build_subnet(space, genome, info.in_channels, info.num_classes, info.mean, info.std).eval()

    files = {
        p: convert_modules([ToConvert(f"model_{p}", build, shape)], out, p)[f"model_{p}"]
        for p in ("float32", "int8")
    }
    torch.manual_seed(0)
    model, x = build(), torch.rand(*shape)
    folded, _ = fold_batchnorm(model, x)
    export_onnx(folded, x, out / "model.onnx")
    _simplify(out / "model.onnx")
    files["onnx"] = out / "model.onnx"
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    torch.jit.save(
        traced, str(out / "model.pt"), _extra_files={"nasctl.json": json.dumps({"input_shape": shape})}
    )
    files["torch"] = out / "model.pt"
    return files


def profile(path: Path, runs: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "nasctl",
        "profile",
        str(path),
        "--json",
        "--runs",
        str(runs),
        "--threads",
        str(threads),
        "--store",
        str(path.parent / "store.sqlite"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def litert_tool(path: Path, runs: int, threads: int) -> dict:
    res = path.with_suffix(".tool.json")
    cmd = [
        sys.executable,
        "-m",
        "ai_edge_litert.tools.benchmark_litert_model",
        f"--model={path}",
        f"--num_runs={runs}",
        "--warmup_runs=10",
        f"--num_threads={threads}",
        f"--result_json={res}",
    ]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.read_text())["latency"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="search run folder: time its smallest, median and largest front member")
    ap.add_argument("--space", default="digits", help="the run's space (with --run)")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/backends.json")
    args = ap.parse_args(argv)
    from nasctl.core import atomic_write_json, versions
    from nasctl.nas.data import dataset_info
    from nasctl.nas.space import load_space
    from nasctl.profiling import host_device

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for i, (space_name, g) in enumerate(genomes(args)):
            out = Path(tmp) / f"m{i}"
            files = write_models(space_name, g, out)
            sp = load_space(space_name)
            info = dataset_info("digits" if space_name.startswith("digits") else "cifar10")
            params = sp.cost(sp.parse(g), info.in_channels, info.resolution, info.num_classes)[0]
            row = {
                "space": space_name,
                "genome": g,
                "params": params,
                "files_bytes": {k: p.stat().st_size for k, p in files.items()},
            }
            for key, path in files.items():
                r = profile(path, args.runs, args.threads)
                row[key] = {
                    k: r[k]
                    for k in (
                        "p50_ms",
                        "mean_ms",
                        "p90_ms",
                        "std_ms",
                        "n_runs",
                        "backend",
                        "runtime_version",
                        "peak_memory_bytes",
                        "drift",
                    )
                }
            for p in ("float32", "int8"):
                tool = litert_tool(files[p], args.runs, args.threads)
                row[f"tool_{p}"] = tool
                # the tool prints 0.01 ms steps: below 0.05 ms its median is too coarse to compare with
                coarse = tool["median_ms"] < 0.05
                row[f"ratio_{p}"] = None if coarse else row[p]["p50_ms"] / tool["median_ms"]
            rows.append(row)
            print(f"{space_name} {params:,} params: done", file=sys.stderr, flush=True)
    atomic_write_json(
        args.out,
        {
            "host": host_device().to_dict(),
            "threads": args.threads,
            "runs": args.runs,
            "versions": versions(["ai-edge-litert", "onnxruntime"]),
            "rows": rows,
        },
    )
    print(
        "| space | params | LiteRT int8 p50 ms | LiteRT float32 p50 ms | ONNX Runtime p50 ms | "
        "PyTorch p50 ms "
        "| LiteRT tool float32 / int8 median ms | nasctl / tool (float32, int8) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        ratios = ", ".join(
            "n/a (tool <0.05 ms)" if r[f"ratio_{p}"] is None else f"{r[f'ratio_{p}']:.2f}"
            for p in ("float32", "int8")
        )
        print(
            f"| {r['space']} | {r['params']:,} | {r['int8']['p50_ms']:.4f} | {r['float32']['p50_ms']:.4f} | "
            f"{r['onnx']['p50_ms']:.4f} | {r['torch']['p50_ms']:.4f} | "
            f"{r['tool_float32']['median_ms']:.2f} / "
            f"{r['tool_int8']['median_ms']:.2f} | {ratios} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
