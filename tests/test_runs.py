"""Run folders: parallel runs started in the same second each get their own folder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from nasctl.nas.runs import make_run_dir


def test_parallel_runs_get_distinct_folders(tmp_path):
    with ThreadPoolExecutor(max_workers=8) as pool:
        dirs = list(pool.map(lambda _: make_run_dir(tmp_path, "search", "x"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert {d.parent for d in dirs} == {tmp_path / "search"}
