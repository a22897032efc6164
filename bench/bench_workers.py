"""The main job with worker processes against one process, side by side in one sitting (issue 23).

Why: tiny nets leave most of a core idle between their small ops, so two one-thread workers get more
done on 2 cores than one two-thread process. This runs ``nasctl search`` (the main job, or the arguments
after ``--``) alternately with ``--workers 1`` and ``--workers auto``, ``--rounds`` times each, with the
same seed, and reports each run's wall time and stage times, the ratio of the means, and whether every
run wrote the same front (pareto.json's members, inherited and fine-tuned numbers).

    python bench/bench_workers.py --rounds 2 --out bench/results/workers.json
    python bench/bench_workers.py --rounds 1 -- --epochs 5 --generations 3 --finetune-members 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_threads import split_argv  # noqa: E402 (a sibling script: bench/ is the script's path)

ROOT = Path(__file__).resolve().parents[1]
FRONT_KEYS = ("genome", "params", "clean_acc", "adv_acc", "final_clean_acc", "final_adv_acc")  # the search's
TUNED_KEYS = ("finetuned_clean_acc", "finetuned_adv_acc", "finetuned_aa_acc", "finetuned_epoch")


def one_run(nasctl: str, workers: str, root: Path, extra: list[str]) -> dict:
    log = root.with_suffix(".log")
    cmd = [*shlex.split(nasctl), "search", "--run-root", str(root), "--workers", workers, *extra]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"bench_workers: {' '.join(cmd)} failed (exit {rc}); see {log}")
    doc = json.loads(next(root.glob("search/*/pareto.json")).read_text())
    front = [{k: r.get(k) for k in FRONT_KEYS} for r in doc["front"]]
    tuned = [{k: r.get(k) for k in ("genome", *TUNED_KEYS)} for r in doc["front"] if "finetuned_adv_acc" in r]
    return {"workers": workers, "wall_s": round(wall, 1), "stage_seconds": doc.get("stage_seconds"),
            "front_members": len(front), "front": front, "finetuned": tuned}


def main(argv: list[str] | None = None) -> dict:
    argv, extra = split_argv(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (1 worker, auto), alternating")
    ap.add_argument("--nasctl", default=f"{sys.executable} -m nasctl", help="command that starts nasctl")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--work", default=str(ROOT / "bench" / "cache" / f"workers-{stamp}"))
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(1, args.rounds + 1):
        for workers in ("1", "auto"):
            run = one_run(args.nasctl, workers, work / f"w{workers}-{r}", extra)
            runs.append(run)
            print(f"round {r} --workers {workers}: {run['wall_s']:.0f} s  stages {run['stage_seconds']}")
    mean = {w: sum(x["wall_s"] for x in runs if x["workers"] == w) / args.rounds for w in ("1", "auto")}
    same = all(x["front"] == runs[0]["front"] for x in runs)
    # fine-tuning is trained with the worker's one thread or the serial run's threads: the thread count
    # changes floating-point sums, and a training's trajectory follows them
    same_tuned = {w: all(x["finetuned"] == next(y for y in runs if y["workers"] == w)["finetuned"]
                         for x in runs if x["workers"] == w) for w in ("1", "auto")}
    out = {"command": f"{args.nasctl} search --workers W {' '.join(extra)}".strip(), "rounds": args.rounds,
           "mean_wall_s": mean, "ratio_auto_to_1": round(mean["auto"] / mean["1"], 3), "same_front": same,
           "same_finetuned_within_each_setting": same_tuned,
           "runs": [{k: v for k, v in x.items() if k != "front"} for x in runs]}
    print(f"mean wall: --workers 1 {mean['1']:.0f} s, auto {mean['auto']:.0f} s: ratio "
          f"{out['ratio_auto_to_1']:.2f}; the same searched front (members, validation and test numbers) in "
          f"every run: {same}; the same fine-tuned numbers within each setting: {same_tuned}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
