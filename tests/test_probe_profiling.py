"""Issue 26, a hostile user's probe of profiling and the phone commands: each case as it was reported,
checked on what nasctl actually writes (files re-read, rows counted in the SQLite store, the exact
error line)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from nasctl.profiling.result import LatencyResult
from nasctl.profiling.store import APPLICATION_ID, MeasurementStore, Scope

from nasctl.cli import main

from .test_profiling import TINY_SPACE


def cli(args, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nasctl: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def result(p50: float = 1.0, fingerprint: str = "fp") -> LatencyResult:
    return LatencyResult(p50, p50, p50, 0.0, p50, 5, 1, 1, "litert", "v", "host", fingerprint)


def rows(path: Path, table: str = "measurements") -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --- 3. a foreign SQLite file is refused before anything changes ------------------------------------
def foreign_db(path: Path, app_id: int = 0, tables: tuple[str, ...] = ("contacts",)) -> bytes:
    with sqlite3.connect(path) as c:
        for t in tables:
            c.execute(f"CREATE TABLE {t} (name TEXT)")
            c.execute(f"INSERT INTO {t} VALUES ('x')")
        if app_id:
            c.execute(f"PRAGMA application_id = {app_id}")
    c.close()
    return path.read_bytes()


def journal_mode(path: Path) -> str:
    c = sqlite3.connect(path)
    try:
        return c.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        c.close()


def test_a_foreign_database_keeps_its_bytes_and_journal_mode(tmp_path, capsys):
    other = tmp_path / "other.sqlite"
    before = foreign_db(other)
    assert journal_mode(other) == "delete"
    (tmp_path / "model.onnx").write_bytes(b"never timed: the store is refused first")
    rc, _, err = cli(["profile", tmp_path / "model.onnx", "--store", other], capsys)
    one_error_line(rc, err, f"store '{other}' is an SQLite file of another program", "tables: contacts",
                   "left untouched", "pass another --store")
    assert other.read_bytes() == before
    assert journal_mode(other) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "other.sqlite"]  # no -wal, -shm


@pytest.mark.parametrize("app_id, tables, needle", [
    (0x12345678, ("contacts",), "application id 0x12345678"),
    (0x12345678, ("measurements", "meta"), "application id 0x12345678"),  # our table names, not ours
    (0, ("measurements",), "no nasctl schema version"),
])
def test_foreign_databases_that_look_like_a_store_are_refused(tmp_path, app_id, tables, needle):
    from nasctl.profiling.errors import ProfilingError

    other = tmp_path / "other.sqlite"
    before = foreign_db(other, app_id, tables)
    with pytest.raises(ProfilingError, match=needle):
        MeasurementStore(other).open()
    assert other.read_bytes() == before and journal_mode(other) == "delete"


def test_a_new_store_is_stamped_and_an_old_unstamped_store_still_opens(tmp_path):
    new = tmp_path / "new.sqlite"
    with MeasurementStore(new) as s:
        s.add("model", "k", result(), "float32")
    with sqlite3.connect(new) as c:
        assert c.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert journal_mode(new) == "wal"
    # a store from before the stamp: nasctl's tables and meta row, application id 0
    old = tmp_path / "old.sqlite"
    with MeasurementStore(old) as s:
        s.add("model", "k", result(), "float32")
        s.conn.execute("PRAGMA application_id = 0")
    with MeasurementStore(old) as s:
        assert s.count() == 1
        assert s.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


# --- 4. two table builds on one store: no row twice -------------------------------------------------
BUILDER = textwrap.dedent("""
    # one --build-lut of the tiny space with the measuring faked (no conversion): the store, the lock
    # and the build's own bookkeeping are real. Waits for its sibling so that both start together.
    import json, sys, time
    from pathlib import Path
    import nasctl.profiling.lut as lut
    from nasctl.nas.data import dataset_info
    from nasctl.nas.space import load_space
    from nasctl.profiling.result import LatencyResult
    from nasctl.profiling.store import MeasurementStore
    from nasctl.profiling.tasks import build_lut

    space_file, store_path, work, name = sys.argv[1:5]
    log = Path(work) / f"{name}.log"

    def fake_measure(items, precision, settings, target):
        with log.open("a") as f:
            f.write(f"start {time.time()}\\n")
        time.sleep(0.5)  # long enough for the other build to run into the lock
        out = [LatencyResult(0.01 * (1 + len(k) % 7), 0.01 * (1 + len(k) % 7), 0.02, 0.0, 0.01, 30, 5, 1,
                             target.backend.name, target.runtime_version, target.label,
                             target.device.fingerprint, model_path=k) for k, _, _ in items]
        with log.open("a") as f:
            f.write(f"end {time.time()}\\n")
        return out

    lut.measure_modules = fake_measure
    (Path(work) / f"{name}.ready").touch()
    while len(list(Path(work).glob("*.ready"))) < int(sys.argv[5]):
        time.sleep(0.01)
    with MeasurementStore(store_path) as store:
        facts = build_lut(load_space(space_file), dataset_info("digits"), store, "float32",
                          calibration_subnets=4)
    print(json.dumps({"measured_now": facts["measured_now"], "entries": facts["entries"]}))
    """)


def build_in_processes(tmp_path: Path, store: Path, names: list[str]) -> list[dict]:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(space), str(store), str(tmp_path), n,
                               str(len(names))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in names]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [e for _, e in outs]
    for f in tmp_path.glob("*.ready"):
        f.unlink()
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of each batch a build measured (none: it found everything in the store)."""
    if not log.exists():
        return []
    words = [ln.split() for ln in log.read_text().splitlines()]
    starts = [float(t) for w, t in words if w == "start"]
    ends = [float(t) for w, t in words if w == "end"]
    return list(zip(starts, ends))


def test_two_builds_at_once_store_every_row_once(tmp_path):
    store = tmp_path / "s.sqlite"
    a, b = build_in_processes(tmp_path, store, ["a", "b"])
    assert a["entries"] == b["entries"] == 14
    assert sorted([a["measured_now"], b["measured_now"]]) == [0, 14]  # the second waited, then reused
    assert rows(store) == 14 + 4  # the table's layers and the calibration subnets, once each
    assert rows(store, "calibrations") == 1
    # the lock held: the two builds never measured at the same time
    spans = sorted(intervals(tmp_path / "a.log") + intervals(tmp_path / "b.log"))
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), spans
    # and run again, one after the other: still nothing twice
    (c,) = build_in_processes(tmp_path, store, ["c"])
    assert c["measured_now"] == 0 and rows(store) == 18 and rows(store, "calibrations") == 1


def test_add_missing_keeps_one_row_per_key_even_without_the_lock(tmp_path):
    path = tmp_path / "s.sqlite"
    scope = Scope("fp", "litert", "v", "float32", 1)
    with MeasurementStore(path) as s1, MeasurementStore(path) as s2:  # two writers that both measured
        batch = [(f"block:{i}", result(i + 1.0)) for i in range(5)]
        assert s1.add_missing("block", batch, "float32") == 5
        assert s2.add_missing("block", [(k, result(9.0)) for k, _ in batch] + [("block:new", result())],
                              "float32") == 1
        assert s1.count() == 6 and s1.latest(scope, "block")["block:0"].p50_ms == 1.0  # the first kept
        s1.add_many("model", [("m", result())] * 2, "float32")  # plain results still keep their history
        assert s1.count() == 8


def test_the_measuring_lock_is_per_device(tmp_path):
    """A build on another device (another fingerprint) does not wait; one on the same device does."""
    path = tmp_path / "s.sqlite"
    here, there = Scope("fpA", "litert", "v", "float32", 1), Scope("fpB", "adb", "v", "float32", 1)
    held, release, got = threading.Event(), threading.Event(), []

    def holder():
        with MeasurementStore(path) as s, s.measuring_lock(here):
            held.set()
            release.wait(10)

    def taker(scope):
        with MeasurementStore(path) as s, s.measuring_lock(scope):
            got.append(scope[0])

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    other = threading.Thread(target=taker, args=(there,))
    other.start()
    other.join(10)
    same = threading.Thread(target=taker, args=(here,))
    same.start()
    same.join(0.5)
    assert got == ["fpB"] and same.is_alive()  # the other device went ahead, the same one waits
    release.set()
    same.join(10)
    t.join(10)
    assert got == ["fpB", "fpA"]
    assert (tmp_path / ".s.sqlite.fpA.lock").is_file()

