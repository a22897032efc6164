"""Threads that do not fight and logs fit for a file: nasctl/threads.py and the CLI's progress lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasctl import threads
from nasctl.cli import main


def test_the_thread_count_comes_from_the_flag_then_the_environment_then_the_cores():
    cores = threads.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert threads.choose_threads(3, {}).threads == 3 and threads.choose_threads(3, {}).source == "--threads"
    got = threads.choose_threads(None, {"OMP_NUM_THREADS": "5"})
    assert (got.threads, got.source) == (5, "OMP_NUM_THREADS")
    got = threads.choose_threads(None, {"OMP_NUM_THREADS": "junk"})
    assert (got.threads, got.source, got.cores) == (cores, "cores", cores)
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        threads.choose_threads(0, {})


def test_the_busy_warning_fires_only_when_the_threads_do_not_fit_the_idle_cores():
    quiet = threads.ThreadChoice(threads=2, cores=2, source="cores", load=0.3)
    busy = threads.ThreadChoice(threads=2, cores=2, source="cores", load=1.9)
    roomy = threads.ThreadChoice(threads=2, cores=16, source="cores", load=3.0)
    assert quiet.busy_warning() is None and roomy.busy_warning() is None
    assert "load 1.9 on 2 cores" in busy.busy_warning() and "--threads 1" in busy.busy_warning()
    assert threads.ThreadChoice(1, 2, "cores", None).busy_warning() is None
    assert threads.ThreadChoice(2, 2, "OMP_NUM_THREADS", 1.9).busy_warning() is None  # the user chose


def test_openmp_waits_passively_only_when_cores_are_shared_and_the_user_did_not_choose():
    env: dict[str, str] = {}
    threads.prepare_openmp(False, env)
    assert "OMP_WAIT_POLICY" not in env  # alone: spinning threads, the fastest for tiny nets
    threads.prepare_openmp(True, env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prepare_openmp(True, env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_running_jobs_see_each_other_and_a_killed_one_stops_counting(tmp_path):
    """The registry of running nasctl jobs: a live one counts, a killed one (kill -9: no clean-up) does
    not, and its file is removed by the next job that looks."""
    folder = tmp_path / "running"
    code = ("import sys, time; from pathlib import Path; from nasctl import threads\n"
            "with threads.sharing_cores(Path(sys.argv[1])) as n:\n"
            "    print(n, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "0"
        with threads.sharing_cores(folder) as others:
            assert others == 1
    finally:
        child.kill()
        child.wait()
    assert (folder / str(child.pid)).exists()  # killed: its file is left behind, unlocked
    with threads.sharing_cores(folder) as others:
        assert others == 0
    assert not (folder / str(child.pid)).exists() and not any(folder.iterdir())


def test_a_nasctl_process_beside_another_waits_passively_and_records_its_threads(tmp_path):
    """A real ``nasctl train`` process started while another nasctl job runs (this test, registered):
    OpenMP's policy is set before torch starts (the child sees it in its environment), ``--threads``
    wins over OMP_NUM_THREADS, and config.json records the count."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; from nasctl.cli import main; rc = main(sys.argv[1:]); "
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY')); sys.exit(rc)")
    with threads.sharing_cores():
        out = subprocess.run([sys.executable, "-c", code, "train", "--epochs", "1", "--train-subset", "64",
                              "--threads", "2", "--run-root", str(tmp_path)],
                             env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "POLICY PASSIVE" in out.stdout
    doc = json.loads(next((tmp_path / "train").glob("*/config.json")).read_text())
    assert doc["threads"] == 2


def test_a_bad_thread_count_is_one_line(capsys):
    assert main(["train", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--threads must be >= 1" in err


def test_the_library_leaves_torch_threads_alone_and_the_cli_applies_them(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert main(["train", "--epochs", "1", "--train-subset", "64", "--run-root", str(tmp_path)]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)


def test_a_search_logged_to_a_file_has_one_line_per_epoch_and_generation(tmp_path):
    """``nasctl search > log.txt 2>&1``: no carriage-return frames, one line per supernet epoch, per
    generation and per fine-tuned member."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        args = ["search", "--epochs", "2", "--train-subset", "200", "--pop-size", "4", "--generations", "2",
                "--val-size", "40", "--pgd-steps", "1", "--finetune-members", "1", "--finetune-epochs", "1",
                "--test-size", "50", "--run-root", str(tmp_path / "runs")]
        rc = subprocess.run([sys.executable, "-m", "nasctl.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                            cwd=tmp_path, timeout=600).returncode
    text = log.read_text()
    assert rc == 0, text
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch ")] == ["1", "2"]
    assert [ln.split()[1] for ln in lines if ln.startswith("search: ") and " gen " in ln] == ["1/2", "2/2"]
    tuned = [ln.split()[1].rstrip(":") for ln in lines if ln.startswith("fine-tuning ")]
    # one line per member: --finetune-members 1 plus one per size decade of the front without a pick
    assert tuned and tuned == [f"{i}/{len(tuned)}" for i in range(1, len(tuned) + 1)]
    assert len(lines) == len(set(lines)) or all("training on a class-balanced" in ln for ln in lines
                                                   if lines.count(ln) > 1)
    assert Path(lines[-1].split()[2]).is_dir()  # "run folder: PATH  (read summary.md first)"


def test_a_stale_load_average_alone_does_not_make_a_machine_busy(monkeypatch):
    """Right after a job ends the 1-minute load average still says busy; what the CPUs do now decides."""
    from nasctl import threads

    real = threads.busy_cpus_now
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    monkeypatch.setattr(threads, "busy_cpus_now", lambda sample_s=0.25: 0.1)  # the job just ended
    assert not threads.machine_busy(cores=2)
    monkeypatch.setattr(threads, "busy_cpus_now", lambda sample_s=0.25: 1.9)  # still running
    assert threads.machine_busy(cores=2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))  # quiet: no sample taken
    monkeypatch.setattr(threads, "busy_cpus_now", lambda sample_s=0.25: pytest.fail("sampled"))
    assert not threads.machine_busy(cores=2)
    now = real(0.05)  # the real /proc/stat reading
    assert now is None or 0.0 <= now <= (threads.os.cpu_count() or 1) + 1e-9
