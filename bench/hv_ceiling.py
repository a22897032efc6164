"""How close does a search get to the best front known? Hypervolume of the union of many runs.

    python bench/hv_ceiling.py RUN_DIR [RUN_DIR ...]

All runs must search the same supernet with the same seed (the evaluator's BN-recalibration batches
and PGD starts follow the seed, so only then is one genome's score the same in every run). The
union of their archives is the best front known for that setting; each run's hypervolume is
reported against it, which tells how much room a better search algorithm could still have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="search run folders (config.json + archive.jsonl)")
    args = ap.parse_args(argv)
    from nasctl.nas.runs.search import config_from_run, sizes_fn
    from nasctl.nas.search.archive import Archive
    from nasctl.nas.search.front import hypervolume, nondominated
    from nasctl.nas.search.objectives import SIZE_OBJECTIVES, parse_objectives
    from nasctl.nas.supernet.checkpoint import load_supernet

    cfgs = [config_from_run(json.loads((Path(r) / "config.json").read_text())) for r in args.runs]
    keys = {(c.supernet, c.seed, c.objectives) for c in cfgs}
    if len(keys) != 1:
        sys.exit(f"runs differ in (supernet, seed, objectives): {sorted(keys)}; pass runs of one setting")
    cfg = cfgs[0]
    loaded = load_supernet(cfg.supernet)
    objectives, limits = parse_objectives(cfg.objectives), cfg.constraints()
    largest = sizes_fn(loaded.space, loaded.dataset)(loaded.space.largest())
    scale = {k: float(largest[k]) for k in SIZE_OBJECTIVES}  # as the search scales sizes
    union: dict[str, dict] = {}
    rows = []
    for run, c in zip(args.runs, cfgs):
        # repair=False: read only, a running search's half-written last line is skipped, not cut off
        recs = list(Archive(Path(run) / "archive.jsonl", repair=False).records.values())
        for r in recs:
            old = union.setdefault(r["genome"], r)
            if (old["clean_acc"], old["adv_acc"]) != (r["clean_acc"], r["adv_acc"]):
                sys.exit(f"{r['genome']} scored differently in two runs: not one evaluator setting")
        hv = hypervolume(nondominated(recs, objectives, scale, limits), objectives, scale)
        rows.append({"run": run, "algorithm": c.algorithm, "generations": c.generations,
                     "evaluations": len(recs), "hypervolume": hv})
    union_front = nondominated(list(union.values()), objectives, scale, limits)
    best = hypervolume(union_front, objectives, scale)
    for r in rows:
        print(f"{r['algorithm']:>6} {r['evaluations']:4d} evals  HV {r['hypervolume']:.4f}  "
              f"{100 * r['hypervolume'] / best:5.1f} % of the union  {r['run']}")
    print(f"union of {len(rows)} runs: {len(union)} distinct subnets, HV {best:.4f}, "
          f"front {len(union_front)}")
    print(json.dumps({"seed": cfg.seed, "union_subnets": len(union), "union_hypervolume": best,
                      "runs": rows, "mean_hv": float(np.mean([r["hypervolume"] for r in rows]))}))


if __name__ == "__main__":
    main()
