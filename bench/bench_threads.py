"""Jobs side by side on the same cores: one ``nasctl search`` alone, then N of them started together.

Why: OpenMP threads that spin while waiting made two nasctl processes on the same two cores about 20x
slower each (issue 24). nasctl now makes its threads wait passively (``nasctl/threads.py``); this
measures what a user sees: the wall time of each job alone and side by side, with the same settings.

    python bench/bench_threads.py --jobs 2 --out bench/results/threads.json
    python bench/bench_threads.py --jobs 2 --nasctl "python -m nasctl.cli" -- --epochs 5 --generations 2

Arguments after ``--`` go to every ``nasctl search`` (default: none, the main job). ``--nasctl`` is the
command that starts nasctl (another checkout's, to measure "before"). Each job gets its own
``--run-root`` under ``--work``; nothing else is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def split_argv(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(this script's arguments, those after ``--`` for every ``nasctl search``)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def run_jobs(nasctl: str, n: int, extra: list[str], work: Path, env: dict[str, str]) -> list[float]:
    """Start ``n`` searches together; return each one's wall seconds (raises if one fails)."""
    procs = []
    for i in range(n):
        log = open(work / f"job{n}-{i}.log", "w")
        cmd = [*shlex.split(nasctl), "search", "--run-root", str(work / f"job{n}-{i}"), *extra]
        procs.append((time.perf_counter(), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                            env=env, cwd=work), log))
    ended: dict[int, float] = {}
    while len(ended) < len(procs):  # each job's own end time, in whatever order they finish
        for i, (start, p, log) in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = round(time.perf_counter() - start, 1)
                log.close()
                if p.returncode != 0:
                    raise SystemExit(f"bench_threads: a job failed (exit {p.returncode}); see {log.name}")
        time.sleep(0.5)
    return [ended[i] for i in range(len(procs))]


def main(argv: list[str] | None = None) -> dict:
    argv, extra = split_argv(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="searches started together (default 2)")
    ap.add_argument("--nasctl", default=f"{sys.executable} -m nasctl.cli",
                    help="command that starts nasctl (default: this checkout's)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--work", default=str(ROOT / "bench" / "cache" / f"threads-{stamp}"))
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--skip-alone", action="store_true", help="only the jobs side by side")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    alone = None if args.skip_alone else run_jobs(args.nasctl, 1, extra, work, env)[0]
    together = run_jobs(args.nasctl, args.jobs, extra, work, env)
    doc = {"nasctl": args.nasctl, "search_args": extra, "cores": len(os.sched_getaffinity(0)),
           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
           "alone_s": alone, "together_s": together,
           "slowdown": round(max(together) / alone, 2) if alone else None, "work": str(work)}
    print(json.dumps(doc))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
