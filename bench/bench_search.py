"""Benchmark: NSGA-II vs random search at the same evaluation budget, 3 seeds, on digits.

    python bench/bench_search.py --supernet runs/.../supernet.pt --out bench/results/search.json

Both algorithms search the same trained supernet with the same evaluator (PGD-10 on the 200
validation images) and budget (pop_size x generations distinct subnets); the hypervolume is pymoo's,
on objectives scaled as in nasctl.nas.objectives with reference point 1.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nasctl.nas.search import SearchConfig
from nasctl.nas.search_run import search
from nasctl.nas.train import TrainConfig, train_supernet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernet", help="trained supernet; default: train one with the default settings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pop-size", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--out", default="bench/results/search.json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-search-"))
    ckpt = args.supernet or str(train_supernet(TrainConfig(run_root=str(root)))[0])
    res = {"supernet": ckpt, "pop_size": args.pop_size, "generations": args.generations, "runs": []}
    for seed in args.seeds:
        for algo in ("nsga2", "random"):
            t0 = time.perf_counter()
            p = search(SearchConfig(supernet=ckpt, algorithm=algo, seed=seed, pop_size=args.pop_size,
                                    generations=args.generations, run_root=str(root), final_steps=20,
                                    final_restarts=1))
            hist = json.loads((p.parent / "history.json").read_text())["generations"]
            doc = json.loads(p.read_text())
            row = {"algorithm": algo, "seed": seed, "hypervolume": hist[-1]["hypervolume"],
                   "hv_per_generation": [h["hypervolume"] for h in hist], "evaluations": doc["evaluations"],
                   "front_size": len(doc["front"]), "seconds": time.perf_counter() - t0, "run": str(p.parent)}
            res["runs"].append(row)
            print(f"seed {seed} {algo:>6}: HV {row['hypervolume']:.4f}  front {row['front_size']}  "
                  f"evals {row['evaluations']}  {row['seconds']:.0f}s", flush=True)
    summary = {}
    for algo in ("nsga2", "random"):
        hv = [r["hypervolume"] for r in res["runs"] if r["algorithm"] == algo]
        summary[algo] = {"mean": float(np.mean(hv)), "std": float(np.std(hv)), "hv": hv}
    summary["nsga2_vs_random_pct"] = 100 * (summary["nsga2"]["mean"] / summary["random"]["mean"] - 1)
    res["summary"] = summary
    print(f"NSGA-II mean HV {summary['nsga2']['mean']:.4f} ± {summary['nsga2']['std']:.4f}; random "
          f"{summary['random']['mean']:.4f} ± {summary['random']['std']:.4f}; NSGA-II "
          f"{summary['nsga2_vs_random_pct']:+.1f} %")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
