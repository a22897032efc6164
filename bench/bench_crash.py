"""Crash-and-fault suite: ``kill -9`` at random moments of train, search and export, then resume.

    python bench/bench_crash.py --trials 10 --out bench/results/crash.json

For each command, one uninterrupted reference run, then ``--trials`` runs killed with SIGKILL at a
random point of their own progress -- a stage and a position inside it drawn from a seeded
generator (e.g. "after 13 archived subnets, +0.31 s"), so kills land in every stage however loaded
the machine is -- each finished by the command's own recovery:

* ``train``: ``nasctl train --resume RUN``; the final ``supernet.pt`` weights must be bit-identical
  (``torch.equal`` on every tensor) to the reference's and ``metrics.jsonl`` must list every epoch once.
* ``search`` (trains its supernet first and fine-tunes two members at the end, so kills land in
  training, the generations, the final evaluation, the fine-tune stage or the plots): ``nasctl search
  --resume RUN``; the front (timings aside), every archive record's accuracies, the hypervolume of
  every generation and the fine-tuned members' results must equal the reference's.
* ``export`` (ONNX target): the same export again into the same ``--out``; ``model.onnx``'s graph
  (every op and weight; the stamped metadata holds a creation time) must be identical to the
  reference's, and before the re-run the folder must hold no half-written file (every artifact
  ``report.json`` records loads; no temp files left under real names).

A trial reports ``identical`` and ``lost nothing`` or says what differed. Runs in a temp folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["train", "--epochs", "4", "--limit-train", "384", "--attack-steps", "3"]
SEARCH = ["search", "--epochs", "2", "--pop-size", "8", "--generations", "3", "--val-size", "60",
          "--pgd-steps", "2", "--finetune-members", "2", "--finetune-epochs", "2"]


def nasctl(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "nasctl", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_end(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    p = nasctl(args, cwd)
    _, err = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"nasctl {' '.join(args)} failed ({p.returncode}): {err[-1500:]}")
    return time.perf_counter() - t0


def kill_when(args: list[str], cwd: Path, ready, delay: float) -> bool:
    """Start ``nasctl args``; once ``ready()`` holds, wait ``delay`` s and SIGKILL it. False if it
    finished first (then nothing was interrupted)."""
    p = nasctl(args, cwd)
    while p.poll() is None and not ready():
        time.sleep(0.01)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def first(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return found[0] if found else None


def train_point(rng: random.Random, root: Path):
    """Kill during epoch k+1 (k complete epochs on disk), anywhere in its first second."""
    k = rng.randrange(0, 4)

    def ready() -> bool:
        run = first(root / "train", "*")
        return run is not None and lines(run / "metrics.jsonl") >= k

    return f"epoch {k + 1}", ready


def search_point(rng: random.Random, root: Path):
    """A stage of the search (supernet training, generations, final evaluation / fine-tune stage,
    writing outputs) and a position inside it."""
    stage = rng.choice(["training", "generations", "final evaluation", "fine-tune", "outputs"])
    n = {"training": rng.randrange(0, 2), "generations": rng.randrange(1, 24)}.get(stage, 0)

    def ready() -> bool:
        run = first(root / "search", "*")
        if run is None:
            return False
        if stage == "training":
            return lines(run / "supernet" / "metrics.jsonl") >= n
        if stage == "generations":
            return lines(run / "archive.jsonl") >= n
        if stage == "final evaluation":
            return lines(run / "archive.jsonl") >= 24 and (run / "history.json").is_file() and len(
                json.loads((run / "history.json").read_text())["generations"]) >= 3
        if stage == "fine-tune":
            return (run / "finetune").is_dir()
        return len(list((run / "finetune").glob("*/result.json"))) >= 2 or (run / "pareto.json").is_file()

    return f"{stage} ({n})" if n else stage, ready


def export_point(rng: random.Random, out: Path):
    """After s recorded steps of the export's report (0: before the first)."""
    s = rng.randrange(0, 2)

    def ready() -> bool:
        try:
            return len(json.loads((out / "report.json").read_text())["steps"]) >= s
        except (OSError, ValueError, KeyError):
            return False

    return f"step {s + 1}", ready


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _loads(path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
        return True
    except Exception:  # noqa: BLE001 - any failure to load is what this checks for
        return False


def graph_sha(path: Path) -> str:
    """SHA-256 of an ONNX model's graph (weights and ops), without the metadata an export stamps into
    it (creation time, run provenance), which differs between any two exports."""
    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString()).hexdigest()


def only(folder: Path, pattern: str) -> Path | None:
    """The one run folder under ``folder`` (None when the kill came before it was made)."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if len(found) > 1:
        raise RuntimeError(f"expected one {pattern} under {folder}, found {found}")
    return found[0] if found else None


# --- train ---------------------------------------------------------------------------------------
def train_state(run: Path) -> dict:
    import torch

    sd = torch.load(run / "supernet.pt", map_location="cpu", weights_only=True)["model"]
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {"model": sd, "epochs": epochs}


def train_trial(work: Path, ref: dict, rng: random.Random) -> dict:
    import shutil

    import torch

    root = work / "runs"
    point, ready = train_point(rng, root)
    delay = rng.uniform(0.0, 1.0)
    killed = kill_when([*TRAIN, "--run-root", str(root)], work, ready, delay)
    run = only(root / "train", "*")
    if not killed:
        stage = f"{point} +{delay:.2f} s: finished before the kill"
    elif run is None or not (run / "checkpoint.pt").exists():
        stage = f"{point} +{delay:.2f} s, before the first checkpoint"  # nothing to resume: start again
        shutil.rmtree(root, ignore_errors=True)
        run_to_end([*TRAIN, "--run-root", str(root)], work)
        run = only(root / "train", "*")
    else:
        stage = f"{point} +{delay:.2f} s ({lines(run / 'metrics.jsonl')} epochs on disk)"
        run_to_end(["train", "--resume", str(run)], work)
    got = train_state(run)
    same = got["epochs"] == ref["epochs"] and got["model"].keys() == ref["model"].keys() and all(
        torch.equal(got["model"][k], ref["model"][k]) for k in ref["model"])
    return {"stage": stage, "identical": same, "lost_nothing": got["epochs"] == ref["epochs"]}


# --- search --------------------------------------------------------------------------------------
def search_state(run: Path) -> dict:
    doc = json.loads((run / "pareto.json").read_text())
    front = [{k: v for k, v in r.items() if k != "eval_seconds"} for r in doc["front"]]
    tuned = {}
    for r in doc["front"]:
        if "finetuned_checkpoint" in r:
            result = json.loads((run / r["finetuned_checkpoint"]).with_name("result.json").read_text())
            timing = ("train_seconds", "images_per_s")
            tuned[r["genome"]] = {k: v for k, v in result.items() if k not in timing}
    archive = {}
    for ln in (run / "archive.jsonl").read_text().splitlines():
        r = json.loads(ln)
        archive[r["genome"]] = (r["clean_acc"], r["adv_acc"], r["params"])
    hv = [g["hypervolume"] for g in json.loads((run / "history.json").read_text())["generations"]]
    return {"front": front, "archive": archive, "hv": hv, "finetuned": tuned}


def search_stage(run: Path | None) -> str:
    """What was on disk when the process died."""
    if run is None:
        return "no run folder yet"
    tuned = len(list((run / "finetune").glob("*/result.json")))
    return (f"{lines(run / 'supernet' / 'metrics.jsonl')} epochs, {lines(run / 'archive.jsonl')} subnets, "
            f"{tuned} fine-tuned, pareto.json {'written' if (run / 'pareto.json').is_file() else 'not yet'}")


def search_trial(work: Path, ref: dict, rng: random.Random) -> dict:
    root = work / "runs"
    point, ready = search_point(rng, root)
    # candidates are archived every few milliseconds: a long delay would carry a 'generations' kill past
    # the last one
    delay = rng.uniform(0.0, 0.05 if point.startswith("generations") else 1.0)
    killed = kill_when([*SEARCH, "--run-root", str(root)], work, ready, delay)
    run = only(root / "search", "*")
    stage = f"{point} +{delay:.2f} s: " + (search_stage(run) if killed else "finished before the kill")
    archive = run / "archive.jsonl" if run is not None else None
    before = archive.read_bytes() if archive is not None and archive.exists() else b""
    if run is None:
        run_to_end([*SEARCH, "--run-root", str(root)], work)
        run = only(root / "search", "*")
    elif killed:
        run_to_end(["search", "--resume", str(run)], work)
    got = search_state(run)
    complete = before[: before.rfind(b"\n") + 1]  # what was fully on disk at the kill
    kept = (run / "archive.jsonl").read_bytes().startswith(complete)
    lost_nothing = kept and got["archive"] == ref["archive"]
    return {"stage": stage, "identical": got == ref, "lost_nothing": lost_nothing}


# --- export --------------------------------------------------------------------------------------
def export_trial(work: Path, run: Path, ref_onnx: str, rng: random.Random) -> dict:
    out = work / "out"
    args = ["export", "--run", str(run), "--target", "onnx", "--out", str(out), "--threads", "1"]
    point, ready = export_point(rng, out)
    delay = rng.uniform(0.0, 0.5)
    killed = kill_when(args, work, ready, delay)
    clean = True
    stage = f"{point} +{delay:.2f} s: finished before the kill"
    if killed:
        report = out / "report.json"
        where = ("before report.json" if not report.exists()
                 else f"in step {len(json.loads(report.read_text())['steps']) + 1}")
        stage = f"{point} +{delay:.2f} s: {where}"
        if report.exists():
            doc = json.loads(report.read_text())  # must parse: written atomically
            for name in doc.get("artifacts", {}):  # each recorded artifact is a whole, loadable file
                clean &= (out / name).is_file() and (name != "model.onnx" or _loads(out / name))
        clean &= not [p for p in out.glob("*") if p.suffix == ".tmp" and not p.name.startswith(".")]
        run_to_end(args, work)
    same = graph_sha(out / "model.onnx") == ref_onnx
    return {"stage": stage, "identical": same, "lost_nothing": clean}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--commands", default="train,search,export")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/crash.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    results: dict = {"trials": args.trials, "seed": args.seed, "train_args": TRAIN, "search_args": SEARCH,
                     "commands": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ref_search_run = None
        for command in args.commands.split(","):
            ref_dir = base / f"ref-{command}"
            ref_dir.mkdir()
            if command in ("search", "export") and ref_search_run is None:
                search_wall = run_to_end([*SEARCH, "--run-root", str(base / "ref-search-run")], base)
                ref_search_run = only(base / "ref-search-run" / "search", "*")
            if command == "train":
                wall = run_to_end([*TRAIN, "--run-root", str(ref_dir / "runs")], ref_dir)
                ref = train_state(only(ref_dir / "runs" / "train", "*"))
            elif command == "search":
                wall, ref = search_wall, search_state(ref_search_run)
            else:
                wall = run_to_end(["export", "--run", str(ref_search_run), "--target", "onnx", "--out",
                                   str(ref_dir / "out"), "--threads", "1"], ref_dir)
                ref = graph_sha(ref_dir / "out" / "model.onnx")
            rows = []
            for i in range(args.trials):
                work = base / f"{command}-{i}"
                work.mkdir()
                if command == "train":
                    row = train_trial(work, ref, rng)
                elif command == "search":
                    row = search_trial(work, ref, rng)
                else:
                    row = export_trial(work, ref_search_run, ref, rng)
                rows.append(row)
                print(f"{command:>6} trial {i}: {row['stage']}: "
                      f"{'identical' if row['identical'] else 'DIFFERENT'}, "
                      f"{'lost nothing' if row['lost_nothing'] else 'LOST DATA'}", flush=True)
            results["commands"][command] = {"reference_wall_s": round(wall, 1), "rows": rows,
                                            "identical": sum(r["identical"] for r in rows),
                                            "lost_nothing": sum(r["lost_nothing"] for r in rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for command, r in results["commands"].items():
        print(f"{command}: {r['identical']}/{len(r['rows'])} identical, {r['lost_nothing']}/{len(r['rows'])} "
              f"lost nothing (reference {r['reference_wall_s']} s)")
    return results


if __name__ == "__main__":
    main()
