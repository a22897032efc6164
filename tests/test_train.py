"""Supernet training: run folder, atomic checkpoints, exact resume, DDP, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasctl.errors import NasctlError
from nasctl.nas.space import load_space
from nasctl.nas.supernet.checkpoint import load_supernet, read_checkpoint
from nasctl.nas.training.supernet import (
    EpochMetrics,
    TrainCallbacks,
    TrainConfig,
    Trainer,
    resume_training,
    train_supernet,
)

TINY = dict(limit_train=128, batch_size=64, epochs=2, eval_size=40, eval_steps=2, attack_steps=2)


def nasctl(*args: str, cwd: Path, env_extra: dict | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}  # see conftest._one_torch_thread
    return subprocess.run([sys.executable, "-m", "nasctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nasctl: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(**TINY, run_root=str(root), name="tiny")
    path, history = train_supernet(cfg)
    return path, history


def test_run_folder_is_complete(tiny_run):
    path, history = tiny_run
    run = path.parent
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["seed"] == 0 and doc["seed"] == 0 and "torch" in doc["versions"]
    assert doc["eps"] == pytest.approx(0.1) and doc["space"]["name"] == "digits"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert len(history) == 2 and set(history[-1].val) == {"largest", "smallest"}
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["attack"] == "pgd"
    loaded = load_supernet(path)
    assert loaded.space == load_space("digits") and loaded.epoch == 2
    assert not list(run.glob(".*.tmp")), "no temporary files left behind"


@pytest.mark.parametrize("space, ends", [("digits-ir", ("largest", "smallest")), ("digits", ("largest",))])
def test_training_learns_something(tmp_path, space, ends):
    """A few epochs on 512 images: the space's ends beat chance (10 %) clearly. Not the smallest
    digits subnet: it is the 1.4 K-parameter conv(8) -> conv/2(16), which needs far longer inside the
    supernet (about 68 % clean after the default 60 epochs, BENCHMARKS.md)."""
    cfg = TrainConfig(space=space, limit_train=512, epochs=4, eval_size=200, eval_steps=5, attack_steps=3,
                      sampling="sandwich", run_root=str(tmp_path))
    _, history = train_supernet(cfg)
    for label in ends:
        assert history[-1].val[label]["clean_acc"] > 40.0, history[-1].val


class _Crash(TrainCallbacks):
    def on_epoch_end(self, m: EpochMetrics) -> None:
        if m.epoch == 1:
            raise KeyboardInterrupt


def test_resume_continues_bit_for_bit(tmp_path, tiny_run):
    straight, _ = tiny_run
    cfg = TrainConfig(**TINY, run_root=str(tmp_path), name="crash")
    with pytest.raises(KeyboardInterrupt):
        train_supernet(cfg, callbacks=_Crash())
    run = next((tmp_path / "train").iterdir())
    assert read_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and not (run / "supernet.pt").exists()
    resumed, history = resume_training(run)
    assert [m.epoch for m in history] == [2]
    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_catastrophic_overfitting_guard_restores_best(tmp_path, digits):
    cfg = TrainConfig(**{**TINY, "attack": "fgsm-rs"}, run_root=str(tmp_path))
    tr = Trainer(cfg, tmp_path, data=digits)
    good = {k: v.clone() for k, v in tr.supernet.state_dict().items()}
    def mk(e, adv):
        return EpochMetrics(e, 0.1, 1.0, 90, 50, {"largest": {"clean_acc": 90, "adv_acc": adv}}, 1, 1)

    tr.guard_overfitting(mk(1, 60.0))
    with torch.no_grad():
        for p in tr.supernet.parameters():
            p.add_(1.0)
    m = mk(2, 10.0)
    tr.guard_overfitting(m)
    assert m.catastrophic_overfitting and tr.stopped_early
    for k, v in tr.supernet.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_config_rejects_bad_values():
    from nasctl.config import merge_config

    with pytest.raises(NasctlError, match="--epochs must be >= 0"):
        merge_config(TrainConfig, None, {"epochs": -1})
    with pytest.raises(NasctlError, match="did you mean 'epochs'"):
        merge_config(TrainConfig, None, {"epoch": 3})


def test_config_file_then_flags(tmp_path):
    from nasctl.config import merge_config

    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\nlr: 0.2\n")
    cfg = merge_config(TrainConfig, str(p), {"lr": 0.05})
    assert cfg.epochs == 3 and cfg.lr == 0.05 and cfg.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("args, needles", [
    (["train", "--epochs", "-1"], ["--epochs must be >= 0"]),
    (["train", "--dataset", "cifar-10"], ["unknown", "cifar10"]),
    (["train", "--dataset", "cifar10"], ["--data-dir"]),
    (["train", "--space", "nospace"], ["unknown search space"]),
    (["train", "--config", "missing.yaml"], ["does not exist"]),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needles):
    one_line_error(nasctl(*args, cwd=tmp_path), *needles)


def test_cli_offline_download_is_one_line(tmp_path):
    one_line_error(nasctl("train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                          cwd=tmp_path),
                   "cifar-10-batches-py")


def test_cli_corrupt_checkpoint_is_one_line_and_kept(tmp_path, tiny_run):
    path, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    data = path.parent.joinpath("checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    one_line_error(nasctl("train", "--resume", str(run), cwd=tmp_path), "corrupt or truncated", "--resume")
    assert (run / "checkpoint.pt").stat().st_size == len(data) // 2  # nothing deleted
    (run / "checkpoint.pt").write_text("not a checkpoint")
    one_line_error(nasctl("train", "--resume", str(run), cwd=tmp_path), "checkpoint")


def test_checkpoint_from_another_space_is_refused(tiny_run):
    path, _ = tiny_run
    with pytest.raises(NasctlError, match="trained on space 'digits'"):
        load_supernet(path, expect_space=load_space("digits", width_mult=2.0))


def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with 2 processes on the gloo backend: one shared run folder, one checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29531", "-m", "nasctl", "train", "--limit-train", "256",
                           "--epochs", "1", "--attack-steps", "2", "--run-root", str(tmp_path),
                           "--name", "ddp"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "train").iterdir())
    assert len(runs) == 1, runs
    doc = json.loads((runs[0] / "config.json").read_text())
    assert doc["world_size"] == 2
    ckpt = read_checkpoint(runs[0] / "supernet.pt")
    assert ckpt["epoch"] == 1
    m = json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[0])
    # each rank trained on its own half: 256 images -> 2 ranks x 2 batches of 64, x3 sandwich paths
    assert m["images_per_s"] > 0 and m["loss"] > 0
