"""Benchmark: NSGA-II vs random search at the same evaluation budget, several seeds, on digits.

    python bench/bench_search.py --supernet runs/.../supernet.pt --seeds 0 1 2 3 4 5 --jobs 2 \
        --out bench/results/search.json

Both algorithms search the same trained supernet with the same evaluator (PGD-10 on the 200
validation images) and budget (pop_size x generations distinct subnets); the hypervolume is pymoo's,
on objectives scaled as in nasctl.nas.search.objectives with reference point 1.1.

NSGA-II's mutation rate (``--mutation-genes``) was chosen on seeds 0-2; ``--tuned-seeds`` names
them so the summary also reports the seeds the choice never saw, which is the honest figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _one(job: dict) -> dict:
    """One search run in its own process (one torch thread each, so two jobs share 2 cores cleanly)."""
    import torch

    torch.set_num_threads(1)
    from nasctl.nas.runs.search import search
    from nasctl.nas.search import SearchConfig

    t0 = time.perf_counter()
    p = search(SearchConfig(supernet=job["supernet"], algorithm=job["algorithm"], seed=job["seed"],
                            pop_size=job["pop_size"], generations=job["generations"],
                            mutation_genes=job["mutation_genes"], run_root=job["root"], final_steps=20,
                            final_restarts=1, finetune_members=0))  # HV of the search alone
    hist = json.loads((p.parent / "history.json").read_text())["generations"]
    doc = json.loads(p.read_text())
    return {"algorithm": job["algorithm"], "seed": job["seed"], "hypervolume": hist[-1]["hypervolume"],
            "hv_per_generation": [h["hypervolume"] for h in hist], "evaluations": doc["evaluations"],
            "front_size": len(doc["front"]), "seconds": time.perf_counter() - t0, "run": str(p.parent)}


def _summary(runs: list[dict]) -> dict:
    out = {}
    for algo in ("nsga2", "random"):
        hv = [r["hypervolume"] for r in runs if r["algorithm"] == algo]
        out[algo] = {"mean": float(np.mean(hv)), "std": float(np.std(hv)), "hv": hv}
    out["nsga2_vs_random_pct"] = 100 * (out["nsga2"]["mean"] / out["random"]["mean"] - 1)
    out["nsga2_wins"] = sum(
        a["hypervolume"] > b["hypervolume"] for a in runs if a["algorithm"] == "nsga2"
        for b in runs if b["algorithm"] == "random" and b["seed"] == a["seed"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernet", help="trained supernet; default: train one with the default settings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tuned-seeds", type=int, nargs="*", default=[0, 1, 2],
                    help="seeds the NSGA-II settings were chosen on (reported apart from the others)")
    ap.add_argument("--pop-size", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--mutation-genes", type=float, default=2.0)
    ap.add_argument("--jobs", type=int, default=1, help="parallel runs (each uses one torch thread)")
    ap.add_argument("--out", default="bench/results/search.json")
    ap.add_argument("--work", help="folder the search runs go to, kept for bench/hv_ceiling.py (default: "
                    "bench/cache/bench-search-<stamp>, inside the repository and ignored by git)")
    ap.add_argument("--add", action="store_true",
                    help="add these seeds' runs to the results already in --out (same supernet and settings)")
    args = ap.parse_args()
    root = Path(args.work or f"bench/cache/bench-search-{time.strftime('%Y%m%d-%H%M%S')}")
    root.mkdir(parents=True, exist_ok=True)
    if args.supernet:
        ckpt = args.supernet
    else:
        from nasctl.nas.training.supernet import TrainConfig, train_supernet

        ckpt = str(train_supernet(TrainConfig(run_root=str(root)))[0])
    jobs = [{"supernet": ckpt, "algorithm": algo, "seed": seed, "pop_size": args.pop_size,
             "generations": args.generations, "mutation_genes": args.mutation_genes, "root": str(root)}
            for seed in args.seeds for algo in ("nsga2", "random")]
    res = {"supernet": ckpt, "pop_size": args.pop_size, "generations": args.generations,
           "mutation_genes": args.mutation_genes, "tuned_seeds": args.tuned_seeds, "runs": []}
    if args.add:
        old = json.loads(Path(args.out).read_text())
        settings = ("supernet", "pop_size", "generations", "mutation_genes", "tuned_seeds")
        if any(old[k] != res[k] for k in settings):
            sys.exit(f"--add: {args.out} was run with other settings "
                     f"({ {k: old[k] for k in settings} }): drop --add or use another --out")
        res["runs"] = [r for r in old["runs"] if r["seed"] not in args.seeds]
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # read by the spawned workers' OpenMP at start-up
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_one, jobs):
            res["runs"].append(row)
            print(f"seed {row['seed']} {row['algorithm']:>6}: HV {row['hypervolume']:.4f}  front "
                  f"{row['front_size']}  evals {row['evaluations']}  {row['seconds']:.0f}s", flush=True)
    groups = {"all": res["runs"],
              "tuned_seeds": [r for r in res["runs"] if r["seed"] in args.tuned_seeds],
              "held_out_seeds": [r for r in res["runs"] if r["seed"] not in args.tuned_seeds]}
    res["summary"] = {k: _summary(v) for k, v in groups.items() if v}
    for k, s in res["summary"].items():
        print(f"{k}: NSGA-II mean HV {s['nsga2']['mean']:.4f} ± {s['nsga2']['std']:.4f}; random "
              f"{s['random']['mean']:.4f} ± {s['random']['std']:.4f}; "
              f"NSGA-II {s['nsga2_vs_random_pct']:+.1f} %, "
              f"wins {s['nsga2_wins']} of {len(s['nsga2']['hv'])} seeds")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(args.out)
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
