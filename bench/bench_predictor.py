"""Latency predictor benchmark: build each lookup table with the real CLI, then judge its predictions
on held-out subnets measured whole.

For every (space, precision) asked for, it runs ``nasctl profile --build-lut --space S --device host
[--int8] --json`` as a subprocess into a fresh store (wall time = what a user waits, calibration
included), then measures ``--held-out`` seeded random subnets that the calibration did not see
(randomly initialised, converted like every profiled model, timed with LiteRT on one thread) and
reports the share predicted within +-10 % and the mean absolute percentage error, next to the
calibration's own (in-sample) figures. Results go to a JSON file; a markdown table is printed.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_predictor.py --out bench/results/predictor.json
    python bench/bench_predictor.py --case tam:float32 --held-out 30 --store bench/cache/predictor.sqlite

Run it on a quiet machine: a busy core shows up as drift (recorded) and as a worse predictor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = ("digits:float32", "digits:int8", "tam:float32", "tam:int8")


def run_case(space_name: str, precision: str, store: Path, held_out: int, seed: int) -> dict:
    from nasctl.profiling import MeasurementStore, accuracy, load_table, measure_genomes, sample_genomes
    from nasctl.profiling.lut import host_scope
    from nasctl.profiling.tasks import resolve_space

    cmd = [
        sys.executable,
        "-m",
        "nasctl",
        "profile",
        "--build-lut",
        "--space",
        space_name,
        "--device",
        "host",
        "--store",
        str(store),
        "--json",
        *(["--int8"] if precision == "int8" else []),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    space, info = resolve_space(space_name, None)
    with MeasurementStore(store) as s:
        table = load_table(s, space, info, host_scope(precision))
        seen = set(table.fit["genomes"])
        pool = sample_genomes(space, held_out * 3 + len(seen), seed)
        test = [g for g in pool if g.encode() not in seen][:held_out]
        t1 = time.perf_counter()
        measured = measure_genomes(space, info, test, s, precision)
        held_seconds = time.perf_counter() - t1
    pred = [table.predict_ms(g) for g in test]
    meas = [r.p50_ms for r in measured]
    return {
        "space": space_name,
        "precision": precision,
        "command": " ".join(cmd[1:]),
        "build_lut_wall_seconds": wall,
        "entries": facts["entries"],
        "max_drift": facts["max_drift"],
        "calibration": facts["calibration"],
        "held_out": {"n": len(test), "seed": seed, **accuracy(pred, meas)},
        "held_out_seconds": held_seconds,
        "measured_ms_range": [min(meas), max(meas)],
        "pairs": [
            {"genome": g.encode(), "predicted_ms": p, "measured_ms": m} for g, p, m in zip(test, pred, meas)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", choices=CASES, help="space:precision (default: all four)")
    ap.add_argument("--held-out", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1, help="seed of the held-out sample (calibration uses 0)")
    ap.add_argument(
        "--store",
        default="bench/cache/predictor.sqlite",
        help="store file; removed first so every table is measured from scratch",
    )
    ap.add_argument("--keep-store", action="store_true", help="reuse what the store holds (not a timing run)")
    ap.add_argument("--out", default="bench/results/predictor.json")
    args = ap.parse_args(argv)
    store = Path(args.store)
    store.parent.mkdir(parents=True, exist_ok=True)
    if not args.keep_store:
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
    results = []
    for case in args.case or CASES:
        space_name, precision = case.split(":")
        r = run_case(space_name, precision, store, args.held_out, args.seed)
        results.append(r)
        print(
            f"{case}: build {r['build_lut_wall_seconds']:.0f} s, held-out "
            f"{r['held_out']['within_10pct']:.0%} "
            f"within 10 %, MAPE {r['held_out']['mape_pct']:.1f} %",
            file=sys.stderr,
            flush=True,
        )
    from nasctl.core import atomic_write_json, versions
    from nasctl.profiling import host_device

    atomic_write_json(
        args.out,
        {
            "host": {
                **host_device().to_dict(),
                "python": platform.python_version(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            },
            "versions": versions(["ai-edge-litert", "onnx2tf", "tensorflow"]),
            "results": results,
        },
    )
    print(
        "| space | precision | table entries | `--build-lut` wall (s) | calibration in-sample within 10 % "
        "/ MAPE "
        "| held-out subnets | held-out within 10 % | held-out MAPE | measured range (ms) |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---|")
    for r in results:
        c, h = r["calibration"], r["held_out"]
        print(
            f"| {r['space']} | {r['precision']} | {r['entries']} | {r['build_lut_wall_seconds']:.0f} | "
            f"{c['within_10pct']:.0%} / {c['mape_pct']:.1f} % | {h['n']} | {h['within_10pct']:.0%} | "
            f"{h['mape_pct']:.1f} % | {r['measured_ms_range'][0]:.4f}-{r['measured_ms_range'][1]:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
