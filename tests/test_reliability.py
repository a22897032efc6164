"""Reliability through the command line: nothing a user or a run wrote is lost or overwritten, bad files
and a broken environment give one line and exit 2, meaningless settings are refused.

Each test is one case a hostile but realistic user met (issue "Reliability"); the data-loss cases
compare every file of the run byte for byte before and after.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nasctl.cli import main
from nasctl.nas.runs.search import search
from nasctl.nas.search import SearchConfig
from nasctl.nas.training.supernet import TrainConfig, train_supernet
from nasctl.runfolder import run_lock

TINY = dict(pop_size=4, generations=2, val_size=40, pgd_steps=1, calib_batches=1, final_steps=1,
            final_restarts=1, finetune_members=0)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but run locks) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def error_line(capsys) -> str:
    """The one error line (progress bars and log lines aside), and no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("nasctl: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished search that trained its own supernet (in <run>/supernet/), as the main job does."""
    root = tmp_path_factory.mktemp("runs")
    return search(SearchConfig(epochs=1, run_root=str(root), name="own", **TINY)).parent


@pytest.fixture(scope="module")
def half_width_supernet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("half")
    return train_supernet(TrainConfig(limit_train=128, epochs=1, width_mult=0.5, eval_size=20, eval_steps=1,
                                      attack_steps=1, run_root=str(root)))[0]


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "r"
    shutil.copytree(trained_run, dst)
    return dst


def _front(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "eval_seconds"}
            for r in json.loads((run / "pareto.json").read_text())["front"]]


# --- data loss ----------------------------------------------------------------------------------
def test_resume_refuses_a_supernet_of_another_width_before_writing(run_copy, half_width_supernet, capsys):
    own = (run_copy / "supernet" / "supernet.pt").read_bytes()
    shutil.copy(half_width_supernet, run_copy / "supernet" / "supernet.pt")
    (run_copy / "pareto.json").unlink()  # as after a crash: the search has work left to do
    before = tree(run_copy)
    assert main(["search", "--resume", str(run_copy)]) == 2
    line = error_line(capsys)
    assert "x0.5" in line and "x1" in line, line  # names both spaces
    assert tree(run_copy) == before
    (run_copy / "supernet" / "supernet.pt").write_bytes(own)  # the right one back: the run is intact
    assert main(["search", "--resume", str(run_copy)]) == 0


def test_resume_refuses_a_retrained_supernet_of_the_same_space(trained_run, tmp_path, capsys):
    """Same space, other weights: the archive's numbers would belong to another supernet."""
    run = tmp_path / "r"
    shutil.copytree(trained_run, run)
    other = train_supernet(TrainConfig(limit_train=128, epochs=1, eval_size=20, eval_steps=1, attack_steps=1,
                                       seed=5, run_root=str(tmp_path / "t")))[0]
    shutil.copy(other, run / "supernet" / "supernet.pt")
    (run / "pareto.json").unlink()
    before = tree(run)
    assert main(["search", "--resume", str(run)]) == 2
    assert "sha256" in error_line(capsys)
    assert tree(run) == before


def test_a_bad_line_inside_the_archive_is_kept_skipped_and_reevaluated(run_copy, capsys, caplog):
    archive = run_copy / "archive.jsonl"
    lines = archive.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[2])["genome"]
    lines[2] = b'{"genome": "ir_k3_e3_c8-ski### not json\n'
    lines[4] = json.dumps({"clean_acc": 1.0}).encode() + b"\n"  # valid JSON without a genome
    corrupted = b"".join(lines)
    archive.write_bytes(corrupted)
    (run_copy / "pareto.json").unlink()
    assert main(["search", "--resume", str(run_copy)]) == 0
    after = archive.read_bytes()
    assert after.startswith(corrupted)  # nothing already on disk was cut or changed
    added = [json.loads(ln) for ln in after[len(corrupted):].splitlines()]
    assert victim in [r["genome"] for r in added]  # its candidate was evaluated again
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "line 3 " in warnings and "line 5 " in warnings


def test_only_a_half_written_last_line_is_cut(run_copy):
    archive = run_copy / "archive.jsonl"
    good = archive.read_bytes()
    archive.write_bytes(good + b'{"genome": "ir_k3_e')
    (run_copy / "pareto.json").unlink()
    assert main(["search", "--resume", str(run_copy)]) == 0
    assert archive.read_bytes() == good  # every evaluation was already there: nothing new to append


# --- tracebacks that became one line ------------------------------------------------------------
@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["config"].update(pop_sise=4), "did you mean 'pop_size'"),
    (lambda d: d["config"].update(pop_size="four"), "'pop_size'"),
    (lambda d: d.update(config=[1, 2]), "no 'config'"),
    (None, "not valid JSON"),
])
def test_a_broken_run_config_is_one_line(run_copy, capsys, edit, needle):
    path = run_copy / "config.json"
    if edit is None:
        path.write_text(path.read_text()[:-20])
    else:
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    assert main(["search", "--resume", str(run_copy)]) == 2
    line = error_line(capsys)
    assert needle in line and "config.json" in line, line


def test_run_root_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--epochs", "1", "--run-root", str(tmp_path / "afile" / "runs")]) == 2
    assert "Not a directory" in error_line(capsys)


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of a given size (the real 'disk full'), or a skip where mounting is not allowed."""
    mounted = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_disk_during_training_is_one_line(small_fs, capsys):
    root = small_fs("300k")
    rc = main(["train", "--epochs", "2", "--limit-train", "128", "--attack-steps", "1",
               "--run-root", str(root)])
    assert rc == 2
    line = error_line(capsys)
    assert "No space left on device" in line and "free some disk space" in line


def test_read_only_output_folder_is_one_line(small_fs, capsys):
    root = small_fs("1m", read_only=True)
    assert main(["train", "--epochs", "1", "--run-root", str(root)]) == 2
    assert "Read-only file system" in error_line(capsys)


def test_full_disk_on_history_json_is_one_line_and_resumable(trained_run, tmp_path, capsys, monkeypatch):
    """In-test fault injection: history.json's write fails as on a full disk; the archive survives."""
    import errno

    import nasctl.core as ck

    real = ck.atomic_write_json

    def failing(path, obj):
        if Path(path).name == "history.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(ck, "atomic_write_json", failing)
    sn = trained_run / "supernet" / "supernet.pt"
    assert main(["search", "--supernet", str(sn), "--run-root", str(tmp_path), "--pop-size", "4",
                 "--generations", "2", "--val-size", "40", "--pgd-steps", "1",
                 "--finetune-members", "0"]) == 2
    assert "No space left on device" in error_line(capsys)
    run = next((tmp_path / "search").iterdir())
    assert len((run / "archive.jsonl").read_text().splitlines()) == 4  # generation 1 is kept
    monkeypatch.setattr(ck, "atomic_write_json", real)
    assert main(["search", "--resume", str(run)]) == 0


def test_full_disk_during_export_is_one_line(trained_run, small_fs, capsys):
    out = small_fs("24k")
    assert main(["export", "--run", str(trained_run), "--target", "onnx", "--out", str(out / "e")]) == 2
    line = error_line(capsys)
    assert "No space left on device" in line and "free some disk space" in line, line


def test_eval_negative_eps_is_one_line(trained_run, capsys):
    assert main(["eval", "--run", str(trained_run), "--eps", "-1"]) == 2
    assert "--eps" in error_line(capsys)


# --- values the search must refuse ----------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--eps", "-1"], "--eps"), (["--eps", "5"], "--eps"), (["--val-size", "0"], "--val-size"),
    (["--epochs", "0"], "--epochs"), (["--min-clean-acc", "150"], "percentage"),
])
def test_search_refuses_meaningless_values(tmp_path, capsys, args, needle):
    assert main(["search", "--run-root", str(tmp_path), *args]) == 2
    assert needle in error_line(capsys)
    assert not (tmp_path / "search").exists() or not any((tmp_path / "search").iterdir())


def test_constraints_nothing_meets_exit_non_zero_and_say_so(trained_run, tmp_path, capsys):
    sn = trained_run / "supernet" / "supernet.pt"
    assert main(["search", "--supernet", str(sn), "--run-root", str(tmp_path), "--max-params", "10",
                 "--pop-size", "4", "--generations", "1", "--val-size", "40", "--pgd-steps", "1",
                 "--finetune-members", "0"]) == 2
    line = error_line(capsys)
    assert "no candidate met the constraints (--max-params 10)" in line and "the smallest has" in line
    run = next((tmp_path / "search").iterdir())
    summary = (run / "summary.md").read_text()
    assert "No subnet met the constraints" in summary and "front_projections.png" not in summary
    assert not (run / "front_projections.png").exists()
    assert main(["export", "--run", str(run), "--target", "onnx"]) == 2
    assert "meets its constraints" in error_line(capsys)


def test_a_run_in_use_is_refused_naming_the_process(run_copy, capsys):
    import os

    (run_copy / "pareto.json").unlink()
    before = tree(run_copy)
    with run_lock(run_copy):
        assert main(["search", "--resume", str(run_copy)]) == 2
        line = error_line(capsys)
    assert f"process {os.getpid()}" in line
    assert tree(run_copy) == before


def test_negative_pick_is_refused(trained_run, capsys):
    assert main(["export", "--run", str(trained_run), "--pick", "-1", "--target", "onnx"]) == 2
    assert "pick 0.." in error_line(capsys)


def test_a_moved_run_exports_with_its_own_supernet(trained_run, tmp_path, capsys):
    doc = json.loads((trained_run / "pareto.json").read_text())
    assert doc["supernet"] == "supernet/supernet.pt"  # relative to the run: survives moves and copies
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained_run, moved)
    assert main(["export", "--run", str(moved), "--target", "onnx", "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert Path(report["source"]["checkpoint"]).resolve() == (moved / "supernet" / "supernet.pt").resolve()


# --- cosmetic ------------------------------------------------------------------------------------
def test_interrupt_names_the_run_to_resume(trained_run, tmp_path, capsys, monkeypatch):
    import nasctl.nas.runs.search as sr

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sr, "run_generations", interrupted)
    sn = trained_run / "supernet" / "supernet.pt"
    assert main(["search", "--supernet", str(sn), "--run-root", str(tmp_path), "--name", "x",
                 "--finetune-members", "0"]) == 130
    run = next((tmp_path / "search").iterdir())
    assert f"--resume {run}" in capsys.readouterr().err


def test_interrupted_export_says_so(trained_run, tmp_path, capsys, monkeypatch):
    from nasctl.export import pipeline

    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.STEPS, "onnx", interrupted)
    rc = main(["export", "--run", str(trained_run), "--target", "onnx", "--out", str(tmp_path / "e")])
    assert rc == 130
    out = capsys.readouterr().out
    assert "interrupted" in out and "see the error below" not in out


def test_resumed_training_writes_each_epoch_once(tmp_path):
    from nasctl.nas.training.supernet import resume_training

    path, _ = train_supernet(TrainConfig(limit_train=128, epochs=1, eval_size=20, eval_steps=1,
                                         attack_steps=1, run_root=str(tmp_path)))
    metrics = path.parent / "metrics.jsonl"
    first = metrics.read_text()
    # as when the checkpoint write after epoch 2's metrics line failed (disk full): the line is there,
    # the checkpoint still says epoch 1
    metrics.write_text(first + first.replace('"epoch": 1', '"epoch": 2'))
    resume_training(path.parent, epochs=2)
    epochs = [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()]
    assert epochs == [1, 2]


def test_failed_train_leaves_no_empty_run_folder(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"),
                 "--run-root", str(tmp_path / "runs")]) == 2
    error_line(capsys)
    train_root = tmp_path / "runs" / "train"
    assert not train_root.exists() or list(train_root.iterdir()) == []
