"""Export benchmark: three subnets of different sizes through ``nasctl export --target tflite --int8``.

For each subnet it records file sizes (ONNX, float32 and int8 TFLite), export time per step, clean
and robust accuracy of the float model vs the int8 model under the three deployed-robustness
attacks (transfer PGD, fake-quant twin PGD, Square on the interpreter), and host latency of each
artifact (ONNX Runtime and the LiteRT interpreter; median and p90 of single-image runs after a
warm-up, one thread). Results go to a JSON file and a markdown table is printed for BENCHMARKS.md.

Usage::

    python bench/bench_export.py --checkpoint runs/train/<run>/supernet.pt   # smallest / mid / largest
    python bench/bench_export.py --checkpoint CKPT --arch G1 --arch G2 --arch G3
    python bench/bench_export.py --run runs/search/<run>      # min / median / max params of its front

Latency numbers are only comparable on the same machine: the JSON records the host.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def pick_genomes(args) -> tuple[str, list[str]]:
    """(checkpoint, three genome strings of different sizes)."""
    from nasctl.export.source import pick_from_run, read_front
    from nasctl.nas.supernet.checkpoint import load_supernet

    if args.run:
        run_dir, doc = read_front(args.run)
        front = sorted(range(len(doc["front"])), key=lambda i: doc["front"][i].get("params", 0))
        idx = [front[0], front[len(front) // 2], front[-1]] if len(front) >= 3 else front
        picks = [pick_from_run(run_dir, i) for i in dict.fromkeys(idx)]
        return picks[0].checkpoint, [p.genome for p in picks]
    loaded = load_supernet(args.checkpoint)
    if args.arch:
        return args.checkpoint, list(args.arch)
    space, ds = loaded.space, loaded.dataset
    rng = np.random.default_rng(args.seed)
    samples = [space.sample(rng) for _ in range(25)]

    def params(g):
        return space.cost(g, ds["in_channels"], ds["resolution"], ds["num_classes"])[0]

    mid = sorted(samples, key=params)[len(samples) // 2]
    return args.checkpoint, [space.smallest().encode(), mid.encode(), space.largest().encode()]


def measure_latency(out_dir: Path, n_runs: int, warmup: int) -> dict:
    """The exported files timed by the profiler (``nasctl profile``'s code: a fresh worker process per
    backend, warm-up, single-invocation timing, one thread), not by a loop of this script's own."""
    from nasctl.profiling import ProfileSettings, measure

    settings = ProfileSettings(threads=1, runs=n_runs, warmup=warmup, min_seconds=0)
    files = {"onnxruntime": out_dir / "model.onnx", "litert_float32": out_dir / "model_float32.tflite",
             "litert_int8": out_dir / "model_int8.tflite"}
    res = {}
    for key, path in files.items():
        r = measure([path], None, settings)[0]
        res[key] = {"p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms, "n_runs": r.n_runs,
                    "warmup_runs": r.n_warmup, "threads": r.threads, "peak_memory_bytes": r.peak_memory_bytes}
    return res


def row(r: dict) -> dict:
    rep, rob = r["report"], r["report"]["robustness"] or {}
    art = rep["artifacts"]
    int8 = rep["checks"]["tflite_int8"]["detail"]
    att = rob.get("attacks", {})
    return {
        "genome": r["genome"],
        "params": r["params"],
        "macs": r["macs"],
        "onnx_kb": art["model.onnx"]["size_bytes"] / 1024,
        "fp32_kb": art["model_float32.tflite"]["size_bytes"] / 1024,
        "int8_kb": art["model_int8.tflite"]["size_bytes"] / 1024,
        "export_s": rep["total_seconds"],
        "clean_fp32": int8["float_acc"],
        "clean_int8": int8["int8_acc"],
        **{f"{k}_{m}": att[k][f"{m}_robust_acc"] for k in att for m in ("float", "int8")},
        "robust_min_fp32": rob.get("float_robust_acc_min"),
        "robust_min_int8": rob.get("int8_robust_acc_min"),
        "ort_ms": r["latency"]["onnxruntime"]["p50_ms"],
        "litert_fp32_ms": r["latency"]["litert_float32"]["p50_ms"],
        "litert_int8_ms": r["latency"]["litert_int8"]["p50_ms"],
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| genome | params | MACs | ONNX KB | fp32 KB | int8 KB | export s | clean fp32 / int8 | "
        "transfer PGD fp32 / int8 | fake-quant PGD fp32 / int8 | Square fp32 / int8 | "
        "min robust fp32 / int8 | ORT ms | LiteRT fp32 ms | LiteRT int8 ms |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v):
        return "-" if v is None else f"{v:.1f}"

    for r in rows:
        lines.append(
            f"| `{r['genome']}` | {r['params']:,} | {r['macs']:,} | {r['onnx_kb']:.1f} | "
            f"{r['fp32_kb']:.1f} | {r['int8_kb']:.1f} | {r['export_s']:.1f} | "
            f"{f(r['clean_fp32'])} / {f(r['clean_int8'])} | "
            f"{f(r.get('transfer_pgd_float'))} / {f(r.get('transfer_pgd_int8'))} | "
            f"{f(r.get('fakequant_pgd_float'))} / {f(r.get('fakequant_pgd_int8'))} | "
            f"{f(r.get('square_float'))} / {f(r.get('square_int8'))} | "
            f"{f(r['robust_min_fp32'])} / {f(r['robust_min_int8'])} | {r['ort_ms']:.3f} | "
            f"{r['litert_fp32_ms']:.3f} | {r['litert_int8_ms']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="trained supernet checkpoint")
    src.add_argument("--run", help="search run folder: min / median / max params of its front")
    p.add_argument(
        "--arch", action="append", help="genome to export (repeat); default smallest / mid / largest"
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for exports and results.json (default bench/results/export-<stamp>)",
    )
    p.add_argument("--robust-images", type=int, default=200)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--square-queries", type=int, default=300)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--warmup-runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads while exporting (latency runs use 1)"
    )
    args = p.parse_args(argv)

    from nasctl.core import atomic_write_json, versions
    from nasctl.export import ExportConfig, export
    from nasctl.export.source import load_source
    from nasctl.nas.space import Genome

    out = Path(args.out or f"bench/results/export-{time.strftime('%Y%m%d-%H%M%S')}")
    checkpoint, genomes = pick_genomes(args)
    results = []
    for i, genome in enumerate(genomes):
        print(f"[{i + 1}/{len(genomes)}] exporting {genome}", file=sys.stderr, flush=True)
        cfg = ExportConfig(
            checkpoint=checkpoint,
            arch=genome,
            target="tflite",
            int8=True,
            out=str(out / f"model{i}"),
            robust_images=args.robust_images,
            pgd_steps=args.pgd_steps,
            square_queries=args.square_queries,
            seed=args.seed,
            threads=args.threads,
        )
        result = export(cfg)
        src = load_source(checkpoint, genome)
        ds = src.dataset
        params, macs = src.space.cost(
            Genome.decode(genome), ds["in_channels"], ds["resolution"], ds["num_classes"]
        )
        results.append(
            {
                "genome": genome,
                "params": params,
                "macs": macs,
                "out_dir": str(result.out_dir),
                "status": result.status,
                "report": result.report,
                "step_seconds": {s.name: s.seconds for s in result.steps},
                "latency": measure_latency(result.out_dir, args.latency_runs, args.warmup_runs),
            }
        )
    rows = [row(r) for r in results]
    doc = {
        "checkpoint": checkpoint,
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": versions(),
        "settings": vars(args),
        "models": results,
        "table": rows,
    }
    atomic_write_json(out / "results.json", doc)
    print(markdown(rows))
    print(f"\nresults: {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
