"""Run folders: parallel runs started in the same second each get their own folder; every command
places its folder the same way."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from nasctl.runfolder import make_run_dir


def test_parallel_runs_get_distinct_folders(tmp_path):
    with ThreadPoolExecutor(max_workers=8) as pool:
        dirs = list(pool.map(lambda _: make_run_dir(tmp_path, "search", "x"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert {d.parent for d in dirs} == {tmp_path / "search"}


def _command_configs():
    from nasctl.export import ExportConfig
    from nasctl.nas.experiments import STUDIES
    from nasctl.nas.runs.eval import EvalConfig
    from nasctl.nas.search import SearchConfig
    from nasctl.nas.training.subnet import FinetuneConfig
    from nasctl.nas.training.supernet import TrainConfig

    return [TrainConfig, SearchConfig, FinetuneConfig, EvalConfig, ExportConfig,
            *(s.resolve()[0] for s in STUDIES.values())]


@pytest.mark.parametrize("cls", _command_configs(), ids=lambda c: c.__name__)
def test_every_command_places_its_run_folder_one_way(cls, tmp_path):
    """--run-root and --name (add_config_flags, on every command) land in the same two fields of every
    config, and the folder is made by the one exclusive-mkdir helper."""
    from nasctl.runfolder import RunFolder

    assert issubclass(cls, RunFolder)
    named = cls(run_root=str(tmp_path), name="mine").new_run_dir("cmd", default_name="fallback")
    unnamed = cls(run_root=str(tmp_path)).new_run_dir("cmd", default_name="fallback")
    assert named.is_dir() and named.parent == tmp_path / "cmd" and named.name.endswith("-mine")
    assert unnamed.is_dir() and unnamed.name.endswith("-fallback") and unnamed != named


def test_run_scope_discards_a_fresh_empty_folder_and_names_an_interrupted_one(tmp_path):
    """run_scope, the one start / fail / interrupt handling: bad input before any work removes a fresh
    folder that holds only its config; a folder with a result in it, or one being resumed, is kept;
    Ctrl-C becomes RunInterrupted naming the folder (after on_interrupt); the lock is held inside."""
    import fcntl
    import os

    from nasctl.errors import NasctlError, RunInterrupted
    from nasctl.runfolder import run_scope

    def folder(name, *files):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        for f in files:
            (d / f).write_text("x")
        return d

    fresh = folder("fresh")
    with pytest.raises(NasctlError):
        with run_scope(fresh):
            fd = os.open(fresh / ".lock", os.O_RDWR)
            with pytest.raises(BlockingIOError):  # held: a second writer is refused
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
            raise NasctlError("bad input")
    assert not fresh.exists()
    worked = folder("worked", "archive.jsonl")
    with pytest.raises(NasctlError):
        with run_scope(worked):
            raise NasctlError("bad input")
    assert (worked / "archive.jsonl").read_text() == "x"
    resumed = folder("resumed")
    with pytest.raises(NasctlError):
        with run_scope(resumed, fresh=False, lock=False):
            raise NasctlError("bad input")
    assert (resumed / "config.json").exists() and not (resumed / ".lock").exists()
    marks = []
    with pytest.raises(RunInterrupted) as e:
        with run_scope(resumed, fresh=False, on_interrupt=lambda: marks.append("interrupted")):
            raise KeyboardInterrupt
    assert e.value.run_dir == resumed and marks == ["interrupted"]
    with run_scope(resumed) as d:  # a clean exit: nothing removed, the lock released
        assert d == resumed
    fd = os.open(resumed / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
