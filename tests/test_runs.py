"""Run folders: parallel runs started in the same second each get their own folder; every command
places its folder the same way."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from nasctl.nas.runs import make_run_dir


def test_parallel_runs_get_distinct_folders(tmp_path):
    with ThreadPoolExecutor(max_workers=8) as pool:
        dirs = list(pool.map(lambda _: make_run_dir(tmp_path, "search", "x"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert {d.parent for d in dirs} == {tmp_path / "search"}


def _command_configs():
    from nasctl.export import ExportConfig
    from nasctl.nas.experiments import STUDIES
    from nasctl.nas.finetune import FinetuneConfig
    from nasctl.nas.robust_eval import EvalConfig
    from nasctl.nas.search import SearchConfig
    from nasctl.nas.train import TrainConfig

    return [TrainConfig, SearchConfig, FinetuneConfig, EvalConfig, ExportConfig,
            *(s.resolve()[0] for s in STUDIES.values())]


@pytest.mark.parametrize("cls", _command_configs(), ids=lambda c: c.__name__)
def test_every_command_places_its_run_folder_one_way(cls, tmp_path):
    """--run-root and --name (add_config_flags, on every command) land in the same two fields of every
    config, and the folder is made by the one exclusive-mkdir helper."""
    from nasctl.nas.runs import RunFolder

    assert issubclass(cls, RunFolder)
    named = cls(run_root=str(tmp_path), name="mine").new_run_dir("cmd", default_name="fallback")
    unnamed = cls(run_root=str(tmp_path)).new_run_dir("cmd", default_name="fallback")
    assert named.is_dir() and named.parent == tmp_path / "cmd" and named.name.endswith("-mine")
    assert unnamed.is_dir() and unnamed.name.endswith("-fallback") and unnamed != named
