"""Nothing a user already has is lost (issue 26): replacing an export keeps the old one whole until the
new one is complete, one export at a time writes a folder, a re-saved checkpoint keeps its bytes, and an
interrupted ``eval`` keeps the subnets it finished.

Every "untouched" check compares the files byte for byte before and after.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from nasctl.cli import main
from nasctl.core import atomic_torch_save, torch_bytes
from nasctl.export import pipeline
from nasctl.export.pipeline import STEPS
from nasctl.nas.data import load_dataset
from nasctl.nas.space import load_space
from nasctl.nas.supernet import Supernet
from nasctl.nas.supernet.checkpoint import FORMAT
from nasctl.nas.training.supernet import TrainConfig, resume_training, train_supernet

GENOMES = ["skip-skip-ir_k3_e3_c16-skip-ir_k3_e3_c24-skip",
           "ir_k3_e3_c16-skip-ir_k5_e3_c16-skip-ir_k3_e6_c24-skip"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("nasctl: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained digits-ir supernet checkpoint, as 'nasctl train' writes it."""
    space = load_space("digits-ir")
    info = load_dataset("digits").info
    torch.manual_seed(0)
    net = Supernet(space, info.in_channels, info.num_classes, info.mean, info.std)
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    atomic_torch_save({"format": FORMAT, "space": space.to_dict(), "dataset": info.to_dict(),
                       "config": {"seed": 0}, "epoch": 1, "model": net.state_dict()}, path)
    return path


def export(checkpoint: Path, genome: str, out: Path) -> int:
    return main(["export", "--checkpoint", str(checkpoint), "--arch", genome, "--target", "onnx",
                 "--out", str(out), "--threads", "1"])


@pytest.fixture
def exported(checkpoint, tmp_path) -> Path:
    out = tmp_path / "out"
    assert export(checkpoint, GENOMES[0], out) == 0
    (out / "notes.txt").write_text("mine")  # a user's own file beside the export
    return out


# --- replacing an export ------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_failed_re_export_leaves_the_earlier_export_whole(checkpoint, exported, capsys, caplog, monkeypatch,
                                                          failure):
    """The probe: a second export into --out deleted the first before the new one existed, so Ctrl-C or
    a full disk left neither (report.json stuck at 'running')."""
    before = tree(exported)
    real = STEPS["onnx"]

    def fail_after_writing(ctx):
        real(ctx)  # the new model.onnx exists (in staging) when the failure comes
        raise failure

    monkeypatch.setitem(STEPS, "onnx", fail_after_writing)
    rc = export(checkpoint, GENOMES[1], exported)
    assert rc == (130 if isinstance(failure, KeyboardInterrupt) else 2)
    after = tree(exported)
    kept = {k: v for k, v in after.items() if not k.startswith(pipeline.FAILED)}
    assert kept == before  # every byte of the earlier export and the user's file
    assert json.loads(before["report.json"])["status"] == "ok"
    attempt = json.loads(after[f"{pipeline.FAILED}/report.json"])
    assert attempt["status"] == "failed" and attempt["genome"] == GENOMES[1]
    assert not (exported / pipeline.STAGING).exists()
    err = capsys.readouterr().err
    assert f"the previous export in {exported} is unchanged" in caplog.text  # a log line on stderr
    if not isinstance(failure, KeyboardInterrupt):
        assert "No space left on device" in error_line(err)


def test_a_complete_re_export_replaces_the_earlier_one(checkpoint, exported):
    assert export(checkpoint, GENOMES[1], exported) == 0
    files = tree(exported)
    assert json.loads(files["metadata.json"])["genome"] == GENOMES[1]
    assert json.loads(files["report.json"])["genome"] == GENOMES[1]
    assert files["notes.txt"] == b"mine" and not any(k.startswith(".nasctl") for k in files)


def test_a_failed_first_export_keeps_its_report_and_finished_files(checkpoint, tmp_path, monkeypatch):
    real = STEPS["onnx"]

    def fail_after_writing(ctx):
        real(ctx)
        raise KeyboardInterrupt

    monkeypatch.setitem(STEPS, "onnx", fail_after_writing)
    out = tmp_path / "first"
    assert export(checkpoint, GENOMES[0], out) == 130
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["error"] == "interrupted"
    assert (out / "config.json").is_file() and not (out / pipeline.STAGING).exists()


def test_a_kill_while_the_files_move_is_finished_by_the_next_export(checkpoint, exported, tmp_path):
    """SIGKILL in the middle of the commit: the journal says what moves, the next export finishes it
    before doing anything, so the folder holds one whole export, never a mixture."""
    new = tmp_path / "new"
    assert export(checkpoint, GENOMES[1], new) == 0
    staging = exported / pipeline.STAGING
    shutil.copytree(new, staging, ignore=shutil.ignore_patterns(".lock"))
    names = sorted(p.name for p in staging.iterdir())
    (staging / pipeline.JOURNAL).write_text(json.dumps({"move": names, "remove": []}))
    (staging / "model.onnx").replace(exported / "model.onnx")  # the kill came after the first move
    pipeline.recover_export(exported)
    files = tree(exported)
    assert files == {**tree(new), "notes.txt": b"mine"}
    assert json.loads(files["report.json"])["genome"] == GENOMES[1]


def test_two_exports_into_one_folder_at_once(checkpoint, tmp_path, capsys, monkeypatch):
    """The probe: both ended 'done', with one's models and the other's metadata. Now the second is
    refused in one line while the first holds the folder, and the first ends whole."""
    out = tmp_path / "shared"
    real = STEPS["onnx"]
    second: list[int] = []

    def meanwhile(ctx):
        second.append(export(checkpoint, GENOMES[1], out))  # another process would meet the same lock
        return real(ctx)

    monkeypatch.setitem(STEPS, "onnx", meanwhile)
    assert export(checkpoint, GENOMES[0], out) == 0
    assert second == [2]
    line = error_line(capsys.readouterr().err)
    assert f"run folder {str(out)!r} is in use by process" in line and "wait for it to finish" in line
    files = tree(out)
    assert {json.loads(files[n])["genome"] for n in ("metadata.json", "report.json")} == {GENOMES[0]}

    from nasctl.export.onnx import read_metadata

    assert read_metadata(out / "model.onnx")["genome"] == GENOMES[0]


# --- checkpoints ---------------------------------------------------------------------------------------
def test_the_same_weights_give_the_same_checkpoint_bytes(tmp_path):
    """torch.save to a file writes the file's (random temp) name into the zip: two saves of one state
    differed. Saved through memory they are equal, and an unchanged file is not rewritten."""
    state = {"model": torch.nn.Linear(3, 2).state_dict(), "epoch": 1}
    a, b = tmp_path / "a.pt", tmp_path / "sub" / "b.pt"
    atomic_torch_save(state, a)
    atomic_torch_save(state, b)
    assert a.read_bytes() == b.read_bytes() == torch_bytes(state)
    stamp = a.stat()
    atomic_torch_save(state, a)
    assert (a.stat().st_ino, a.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    state["epoch"] = 2
    atomic_torch_save(state, a)
    assert torch.load(a, weights_only=True)["epoch"] == 2


def test_resume_at_the_last_epoch_keeps_the_supernet_file(tmp_path):
    """The probe: 'train --resume' on a finished run rewrote supernet.pt with a new SHA-256, after which
    'search --resume' and 'export --run' refused the run as 'replaced'."""
    cfg = TrainConfig(limit_train=128, batch_size=64, epochs=1, eval_size=20, eval_steps=1, attack_steps=1,
                      run_root=str(tmp_path))
    path, _ = train_supernet(cfg)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stamp = path.stat()
    again, history = resume_training(path.parent)
    assert again == path and history == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


# --- eval -------------------------------------------------------------------------------------------------
def test_ctrl_c_in_eval_writes_the_subnets_it_finished(checkpoint, tmp_path, capsys, monkeypatch):
    """The probe: Ctrl-C after 6 of 32 members wrote no eval.json, though the line said "everything
    finished so far is on disk"."""
    from nasctl.nas.runs import eval as robust_eval

    real, calls = robust_eval.strong_evaluation, []

    def stop_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(robust_eval, "strong_evaluation", stop_at_the_second)
    args = ["eval", "--checkpoint", str(checkpoint), "--arch", GENOMES[0], "--arch", GENOMES[1],
            "--steps", "1", "--restarts", "1", "--square-queries", "0", "--n-images", "10",
            "--run-root", str(tmp_path)]
    assert main(args) == 130
    path = next(tmp_path.glob("eval/*/eval.json"))
    doc = json.loads(path.read_text())
    assert doc["status"] == "interrupted" and (doc["evaluated"], doc["chosen"]) == (1, 2)
    assert [r["genome"] for r in doc["results"]] == [GENOMES[0]]
    assert 0.0 <= doc["results"][0]["clean_acc"] <= 100.0
    err = capsys.readouterr().err
    assert str(path) in err and "interrupted" in err
    monkeypatch.setattr(robust_eval, "strong_evaluation", real)
    assert main(args) == 0  # the command the hint gives
    done = json.loads(sorted(tmp_path.glob("eval/*/eval.json"))[-1].read_text())
    assert done["status"] == "complete" and done["results"][0] == doc["results"][0]


def test_a_folder_without_a_checkpoint_is_named_as_such(tmp_path):
    """``--checkpoint DIR`` on a folder holding no checkpoint: one line saying so, not "corrupt"."""
    from nasctl.errors import NasctlError
    from nasctl.nas.supernet.checkpoint import read_checkpoint

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(NasctlError, match="folder without a checkpoint") as e:
        read_checkpoint(tmp_path)
    assert "corrupt" not in str(e.value) and str(tmp_path) in str(e.value)
