"""Worker processes (issue 23): the pool hands results back in the serial order, names the item a dead
worker was on, and a search run with workers writes the same files as a serial one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasctl.nas.runs.search import search
from nasctl.nas.search import SearchConfig
from nasctl.nas.training.supernet import TrainConfig, train_supernet
from nasctl.workers import WorkerDied, WorkerPool, parse_workers, resolve_workers, worker_state

ROOT = Path(__file__).resolve().parents[1]


# --- tasks the pool's workers import (module level, as spawn needs) ---------------------------------------
def _init(device, offset):
    return {"offset": offset, "pid": os.getpid(), "device": device}


def _add(x):
    if x == "boom":
        raise ValueError("bad item boom")
    if x == "die":
        time.sleep(0.5)  # the items before it finish first
        os.kill(os.getpid(), signal.SIGKILL)
    barrier = os.environ.get("NASCTL_TEST_BARRIER")
    if barrier and x in (0, 1):  # the first two items wait until both workers hold one: a worker slow to
        Path(barrier, str(os.getpid())).touch()  # start (spawn + torch import on a loaded machine) would
        deadline = time.monotonic() + 120  # otherwise leave all 12 short items to the other one
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(0.05 * (x % 3))  # finish out of order
    s = worker_state()
    import torch

    return x + s["offset"], s["pid"], torch.get_num_threads()


def test_pool_answers_in_the_items_order_with_one_thread_each(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCTL_TEST_BARRIER", str(tmp_path))  # read by the spawned workers
    with WorkerPool(2, _init, (100,)) as pool:
        out = list(pool.map(_add, range(12)))
    assert [r[0] for r in out] == [100 + i for i in range(12)]
    assert len({r[1] for r in out}) == 2 and {r[2] for r in out} == {1}  # two processes, one thread each


def test_an_error_in_a_task_reaches_the_parent_as_it_is():
    with WorkerPool(2, _init, (0,)) as pool, pytest.raises(ValueError, match="bad item boom"):
        list(pool.map(_add, [1, "boom", 2]))


def test_a_killed_worker_names_its_item_and_keeps_what_came_before():
    got = []
    with WorkerPool(2, _init, (0,)) as pool, pytest.raises(WorkerDied) as e:
        for r in pool.map(_add, [0, 1, "die", 3], labels=lambda x: f"item {x!r}"):
            got.append(r[0])
    assert got == [0, 1]
    assert "killed by signal 9 while working on item 'die'" in str(e.value) and e.value.exit_code == 1


def test_workers_setting():
    assert parse_workers("auto") == "auto" and parse_workers("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(Exception, match="--workers must be 'auto' or a count >= 1"):
            parse_workers(bad)
    assert resolve_workers("auto", "cpu", cores=3) == 3 and resolve_workers(2, "cpu", cores=8) == 2


# --- a search run: serial, with workers, and a worker killed mid-run --------------------------------------
SHORT = dict(pop_size=6, generations=2, val_size=60, pgd_steps=2, calib_batches=1, final_steps=2,
             final_restarts=1, finetune_members=2, finetune_epochs=2, finetune_select_every=1,
             finetune_autoattack="off")
TIMING = {"run", "seconds", "stage_seconds", "eval_seconds", "train_seconds", "images_per_s"}


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _files(run: Path) -> dict:
    archive = [_untimed(json.loads(line)) for line in (run / "archive.jsonl").read_text().splitlines()]
    results = {str(p.relative_to(run)): _untimed(json.loads(p.read_text()))
               for p in sorted((run / "finetune").glob("*/result.json"))}
    return {"pareto": _untimed(json.loads((run / "pareto.json").read_text())), "archive": archive,
            "finetune": results}


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    return train_supernet(TrainConfig(limit_train=256, epochs=2, eval_size=40, eval_steps=2, attack_steps=2,
                                      run_root=str(root)))[0]


@pytest.fixture(scope="module")
def serial_run(supernet, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serial")
    return search(SearchConfig(supernet=str(supernet), run_root=str(root), workers=1, **SHORT)).parent


def test_a_search_with_workers_writes_what_a_serial_one_writes(supernet, serial_run, tmp_path):
    """Both with one thread per evaluation (the tests' OMP_NUM_THREADS=1): the same archive in the same
    order, the same front and the same fine-tuned members, apart from timings."""
    parallel = search(SearchConfig(supernet=str(supernet), run_root=str(tmp_path), workers=2, **SHORT)).parent
    a, b = _files(serial_run), _files(parallel)
    assert len(a["archive"]) > 6 and len(a["finetune"]) == 2
    assert a == b


def _config(folder: Path, **over) -> str:
    """The short search's settings as a --config file (not all of them are flags)."""
    import yaml

    path = folder / "short.yaml"
    path.write_text(yaml.safe_dump({**SHORT, **over}))
    return str(path)


def _spawned_workers(pid: int) -> list[int]:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]


def test_a_worker_killed_mid_run_stops_it_with_one_line_and_resume_ends_with_the_same_front(
        supernet, serial_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "nasctl", "search", "--supernet", str(supernet), "--run-root",
           str(tmp_path), "--workers", "2", "--config", _config(tmp_path, generations=4)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    archive = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait for the first generation's candidates
        archive = next(tmp_path.glob("search/*/archive.jsonl"), None)
        if archive is not None and len(archive.read_text().splitlines()) >= 6:
            break
        time.sleep(0.2)
    workers = _spawned_workers(proc.pid)
    assert workers, f"no worker process to kill: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("nasctl: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"worker process {workers[0]} killed by signal 9 while working on" in lines[0]
    assert "nasctl search --resume" in lines[0]
    run = archive.parent
    kept = len((run / "archive.jsonl").read_text().splitlines())
    assert kept >= 6 and not (run / "pareto.json").exists()
    # resumed (with its workers) it ends where an uninterrupted run of 4 generations ends
    done = subprocess.run([sys.executable, "-m", "nasctl", "search", "--resume", str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = search(SearchConfig(supernet=str(supernet), run_root=str(tmp_path / "whole"), workers=1,
                                **{**SHORT, "generations": 4})).parent
    a, b = _files(whole), _files(run)
    assert a["pareto"]["front"] == b["pareto"]["front"] and a["finetune"] == b["finetune"]


def test_a_search_under_torchrun_writes_what_a_serial_one_writes(supernet, serial_run, tmp_path):
    """``torchrun --nproc-per-node 2`` on the CPU (gloo): rank 0 writes the run, the candidates, the front
    and the fine-tune stage are dealt to both ranks; the files are the serial run's."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "nasctl", "search", "--supernet", str(supernet), "--run-root", str(tmp_path / "runs"),
           "--config", _config(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").glob("search/*/pareto.json"))
    assert len(runs) == 1, runs  # one run folder, rank 0's
    assert done.stdout.count("Pareto front:") == 1  # rank 0 alone prints the front
    assert _files(serial_run) == _files(runs[0].parent)
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("nasctl-rank1-*"))  # rank 1's copy is gone


def test_the_finetune_vs_scratch_study_with_workers_writes_what_a_serial_one_writes(serial_run, tmp_path):
    """The study's trained cells (fine-tuned and from scratch) by two worker processes: the same
    results.jsonl lines in the same order as in this process, apart from timings."""
    from nasctl.nas.experiments.finetune_scratch import FinetuneScratchConfig, run_finetune_scratch

    def lines(folder: Path) -> list:
        return [_untimed(json.loads(ln)) for ln in (folder / "results.jsonl").read_text().splitlines()]

    outs = [run_finetune_scratch(FinetuneScratchConfig(run=str(serial_run), members=2, epochs=2, workers=w,
                                                       run_root=str(tmp_path / f"w{w}")))
            for w in (1, 2)]
    a, b = lines(outs[0]), lines(outs[1])
    assert len(a) == 6 and [r["arm"] for r in a][:3] == ["inherited", "finetuned", "scratch"]
    assert a == b


def test_the_baselines_benchmark_with_workers_gives_the_serial_numbers(tmp_path):
    """bench/bench_baselines.py trains whole baselines in worker processes (one thread each, as its
    default --threads 1 does in one process): the same numbers, in the same order."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    docs = []
    for w in ("1", "2"):
        out = tmp_path / f"b{w}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "bench_baselines.py"), "--epochs", "1", "--limit-train",
               "128", "--limit-test", "64", "--recipe", "both", "--workers", w, "--out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        docs.append(json.loads(out.read_text()))
    rows = [[_untimed(r) for r in d["baselines"]] for d in docs]
    assert len(rows[0]) == 8 and rows[0] == rows[1]


def test_the_transfer_study_with_workers_writes_what_a_serial_one_writes(serial_run, tmp_path):
    """Each source's attack crafted in a worker process, scored on every target there: the same matrix,
    the same results.jsonl lines in order, as in this process."""
    from nasctl.nas.experiments.transfer import TransferConfig, run_transfer

    def lines(folder: Path) -> list:
        return [_untimed(json.loads(ln)) for ln in (folder / "results.jsonl").read_text().splitlines()]

    outs = [run_transfer(TransferConfig(run=str(serial_run), members=2, steps=2, restarts=1, workers=w,
                                        run_root=str(tmp_path / f"w{w}"))) for w in (1, 2)]
    a, b = lines(outs[0]), lines(outs[1])
    assert len(a) == 3 and a == b


def test_ctrl_c_stops_every_worker(supernet, tmp_path):
    """SIGINT to the parent (Ctrl-C) mid-search: exit 130 with the resume hint, and no worker outlives it."""
    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # 60 generations: a search long enough to be caught mid-way on a fast machine (6 take 2 s); the
    # signal stops it long before it would end
    cmd = [sys.executable, "-m", "nasctl", "search", "--supernet", str(supernet), "--run-root", str(tmp_path),
           "--workers", "2", "--config", _config(tmp_path, generations=60)]
    # SIGINT at its default in the child: a shell without job control starts background jobs with SIGINT
    # ignored, the ignoring is inherited, and Python then installs no KeyboardInterrupt (what a nohup'd
    # run should do, but the test asks what Ctrl-C in a terminal does)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, workers = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        archive = next(tmp_path.glob("search/*/archive.jsonl"), None)
        if archive is not None and archive.read_text().count("\n") >= 3:
            workers = _spawned_workers(proc.pid)
        time.sleep(0.2)
    assert len(workers) == 2, "the workers did not start"
    assert proc.poll() is None, "the search ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "nasctl: interrupted" in err and "--resume" in err
    time.sleep(1)
    alive = [p for p in workers
             if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers left running: {alive}"
