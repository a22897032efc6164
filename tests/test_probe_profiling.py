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

from nasctl.cli import main
from nasctl.profiling.result import LatencyResult
from nasctl.profiling.store import APPLICATION_ID, MeasurementStore, Scope

from .test_android_emulator import cli, one_error_line  # the same CLI-call and one-line-error checks
from .test_profiling import TINY_SPACE


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



# --- the phone commands, through the fake adb of test_android_bench ---------------------------------
@pytest.fixture
def phones(tmp_path, monkeypatch):
    from .test_android_bench import Phones

    world = Phones(tmp_path / "adbworld")
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(world.config))
    monkeypatch.setenv("PATH", f"{world.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return world


@pytest.fixture
def tflite(tmp_path) -> Path:
    p = tmp_path / "knee_float32.tflite"
    p.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(120))  # the flatbuffer identifier is all nasctl checks
    return p


@pytest.fixture
def arm64_binary(tmp_path) -> Path:
    from .test_android_bench import elf

    p = tmp_path / "android_aarch64_benchmark_model"
    p.write_bytes(elf(183))
    return p


def bench(model: Path, binary: Path, store: Path, *extra) -> list:
    return ["bench", model, "--benchmark-binary", binary, "--repeats", "2", "--cooldown", "0", "--store",
            store, *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. bench --out never loses an earlier result ---------------------------------------------------
def test_bench_out_refuses_to_overwrite_an_earlier_run(phones, tflite, arm64_binary, tmp_path, capsys):
    phones.add("A")
    store, out = tmp_path / "m.sqlite", tmp_path / "raw"
    rc, _, err = cli(bench(tflite, arm64_binary, store, "--out", out), capsys)
    assert rc == 0, err
    first = snapshot(out)
    assert sorted(first) == ["A/00-knee_float32.json", "A/00-knee_float32.run1.txt",
                             "A/00-knee_float32.run2.txt"]
    assert json.loads(first["A/00-knee_float32.json"])["p50_ms"] == pytest.approx(1.88574)
    benchmarks = len([c for c in phones.shell_commands("A") if "--graph=" in c])

    rc, _, err = cli(bench(tflite, arm64_binary, store, "--out", out), capsys)
    one_error_line(rc, err, f"--out '{out}' already holds '{out / 'A' / '00-knee_float32.run1.txt'}' and 2 "
                   "more from an earlier run", "never overwrites", "give a new or empty --out folder")
    assert snapshot(out) == first  # every byte of the earlier run kept
    assert len([c for c in phones.shell_commands("A") if "--graph=" in c]) == benchmarks  # refused up front
    assert rows(store) == 1
    # another model into the same folder takes other names: allowed, and the earlier files stay
    other = tmp_path / "other_float32.tflite"
    other.write_bytes(tflite.read_bytes())
    rc, _, err = cli(bench(other, arm64_binary, store, "--out", out), capsys)
    assert rc == 0, err
    after = snapshot(out)
    assert {k: after[k] for k in first} == first and "A/00-other_float32.json" in after
    assert not [p for p in out.rglob(".*")]  # no temp file left behind
    assert rows(store) == 2


def test_a_result_file_that_appears_meanwhile_is_not_replaced(tmp_path):
    from nasctl.android_bench.runner import write_new_file
    from nasctl.profiling.errors import ProfilingError

    target = tmp_path / "A" / "00-m.json"
    write_new_file(target, "first\n")
    assert target.read_text() == "first\n" and oct(target.stat().st_mode & 0o777) != "0o600"
    with pytest.raises(ProfilingError, match="appeared while nasctl bench was running"):
        write_new_file(target, "second\n")  # another run got there between the check and the write
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["00-m.json"]  # the temp file is gone


# --- 2. profile MODEL --device adb:NOSUCH fails and stores nothing ----------------------------------
def test_profile_a_file_on_a_phone_that_is_not_there(phones, tflite, arm64_binary, tmp_path, capsys):
    phones.add("A")
    store = tmp_path / "s.sqlite"
    rc, _, err = cli(["profile", tflite, "--device", "adb:NOSUCH", "--benchmark-binary", arm64_binary,
                      "--store", store], capsys)
    one_error_line(rc, err, "device 'NOSUCH' not found", "connected: A (device)", "nasctl devices")
    assert not store.exists()  # nothing measured on the host, nothing stored
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    rc, _, err = cli(["profile", onnx, "--device", "adb:A", "--store", store], capsys)
    one_error_line(rc, err, "not a TFLite model")
    rc, _, err = cli(["profile", tflite, "--device", "adb:A", "--backend", "onnxruntime", "--store", store],
                     capsys)
    one_error_line(rc, err, "--device adb:A times .tflite files with the phone's benchmark_model")
    assert not store.exists()


def test_profile_a_file_on_the_phone_it_names(phones, tflite, arm64_binary, tmp_path, capsys):
    """The fix is not only the error: MODEL --device adb:SERIAL really times the file on that phone."""
    phones.add("A").add("B")
    store = tmp_path / "s.sqlite"
    rc, out, err = cli(["profile", tflite, "--device", "adb:B", "--benchmark-binary", arm64_binary,
                        "--store", store, "--json"], capsys)
    assert rc == 0, err
    r = json.loads(out)
    assert (r["backend"], r["device"], r["p50_ms"]) == ("adb", "B", pytest.approx(1.88574))
    assert len([c for c in phones.shell_commands("B") if "--graph=" in c]) == 1
    assert not [c for c in phones.shell_commands("A") if "--graph=" in c]
    with MeasurementStore(store) as s:
        ((scope, device, n),) = s.scopes("model")
    assert (scope[1], device, n) == ("adb", "B", 1)


# --- 5. the run cap is stated, and nan is never stored ----------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    import torch
    from torch import nn

    from nasctl.export.onnx import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, torch.rand(1, 1, 8, 8), path)
    return path


def test_min_seconds_stopped_by_the_run_cap_says_so(onnx_model, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    rc, out, err = cli(["profile", onnx_model, "--runs", "5", "--warmup", "0", "--min-seconds", "30",
                        "--max-runs", "200", "--store", store, "--json"], capsys)
    assert rc == 0, err
    r = json.loads(out)
    cap = r["extra"]["max_runs_hit"]
    assert r["n_runs"] == 200 and cap["max_runs"] == 200 and 0 < cap["timed_seconds"] < 30
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith("  warning: stopped at the --max-runs cap of 200 timed runs after ")
    assert "of the 30 s --min-seconds asked for (200 runs made); raise --max-runs" in line
    with MeasurementStore(store) as s:
        (stored,) = s.latest(Scope(r["device_fingerprint"], "onnxruntime", r["runtime_version"], "float32",
                                   1), "model").values()
    assert stored.extra["max_runs_hit"] == cap
    # --min-seconds reached before the cap: no cap, no warning
    rc, out, err = cli(["profile", onnx_model, "--runs", "5", "--warmup", "0", "--min-seconds", "0",
                        "--store", store, "--json"], capsys)
    assert rc == 0 and "max_runs_hit" not in json.loads(out)["extra"] and err.strip() == ""


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_min_seconds_must_be_a_number_of_seconds(onnx_model, tmp_path, capsys, value):
    store = tmp_path / "s.sqlite"
    rc, _, err = cli(["profile", onnx_model, "--min-seconds", value, "--store", store], capsys)
    one_error_line(rc, err, f"--min-seconds a finite number of seconds), got 10, {value}")
    assert not store.exists()


def test_the_store_never_holds_nan(tmp_path):
    from nasctl.profiling.errors import ProfilingError

    path = tmp_path / "s.sqlite"
    nan = float("nan")
    with MeasurementStore(path) as s:
        bad = LatencyResult(nan, nan, nan, nan, nan, 0, 1, 1, "litert", "v", "host", "fp",
                            model_path="m.tflite")
        with pytest.raises(ProfilingError, match="'m.tflite' has mean_ms = nan: it could not be made, so "
                                                 "nothing was stored"):
            s.add_many("model", [("ok", result()), ("bad", bad)], "float32")
        assert s.count() == 0  # the batch is refused whole, before any row is written
        partial = LatencyResult(1.0, 1.0, 1.0, 0.0, 1.0, 5, 1, 1, "adb", "v", "A", "fp", drift=nan,
                                extra={"warmup_avg_ms": nan, "repeats": [{"std_ms": float("inf")}]})
        s.add("model", "k", partial, "float32")
        (text,) = s.conn.execute("SELECT result FROM measurements").fetchone()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back["drift"] is None and back["extra"] == {"warmup_avg_ms": None, "repeats": [{"std_ms": None}]}


def test_a_phone_run_without_warmup_average_stores_null_not_nan(phones, tflite, arm64_binary, tmp_path,
                                                                 capsys):
    from .test_android_bench import SAMPLE

    text = SAMPLE.read_text().replace("Warmup (avg): 637079", "Warmup (avg): nan")
    assert "Warmup (avg): nan" in text
    output = tmp_path / "nan_warmup.txt"
    output.write_text(text)
    phones.add("A", bench_output=str(output))
    store = tmp_path / "m.sqlite"
    rc, _, err = cli(bench(tflite, arm64_binary, store, "--warmup", "0"), capsys)
    assert rc == 0, err
    with sqlite3.connect(store) as c:
        (stored,) = c.execute("SELECT result FROM measurements").fetchone()
    r = json.loads(stored)
    assert "NaN" not in stored and r["extra"]["warmup_avg_ms"] is None
    assert all(p["warmup_avg_us"] is None for p in r["extra"]["parsed"])
    assert r["p50_ms"] == pytest.approx(1.88574)


# --- 6. --benchmark-binary DIR ------------------------------------------------------------------------
def test_benchmark_binary_given_a_directory(phones, tflite, tmp_path, capsys):
    from .test_android_bench import elf

    phones.add("A")
    folder = tmp_path / "tools"
    folder.mkdir()
    store = tmp_path / "s.sqlite"
    rc, _, err = cli(bench(tflite, folder, store), capsys)
    line = one_error_line(rc, err, f"--benchmark-binary '{folder}' is a directory, but the flag takes "
                          "TFLite's benchmark_model executable file: pass the path of the file itself")
    assert "does not exist" not in line and "android_aarch64_benchmark_model" in line  # where to get it
    (folder / "benchmark_model").write_bytes(elf(183))
    rc, _, err = cli(bench(tflite, folder, store), capsys)
    one_error_line(rc, err, "is a directory", f"pass --benchmark-binary {folder / 'benchmark_model'}")
    rc, _, err = cli(bench(tflite, folder / "benchmark_model", store), capsys)
    assert rc == 0, err  # and that file is what works
    rc, _, err = cli(bench(tflite, tmp_path / "missing", store), capsys)
    one_error_line(rc, err, f"--benchmark-binary '{tmp_path / 'missing'}' does not exist")


# --- 7. a timeout hint names a flag the command has ----------------------------------------------------
def test_a_timeout_names_the_flag_of_the_command_that_has_it(phones, tflite, arm64_binary, tmp_path,
                                                              capsys):
    from nasctl.android_bench.adb import Adb, AdbTimeout
    from nasctl.android_bench.runner import BenchOptions
    from nasctl.profiling.backends import ProfileSettings

    phones.add("A", bench_sleep=5)
    store = tmp_path / "s.sqlite"
    rc, _, err = cli(["profile", tflite, "--device", "adb:A", "--benchmark-binary", arm64_binary,
                      "--timeout", "1", "--store", store], capsys)
    one_error_line(rc, err, "on phone 'A' did not answer within 1 s",
                   "(a model this slow needs more: raise --timeout, now 1 s)")
    rc, _, err = cli(bench(tflite, arm64_binary, store, "--timeout", "1.5"), capsys)
    one_error_line(rc, err, "did not answer within 1.5 s", "raise --timeout, now 1.5 s")
    assert rows(store) == 0
    # adb's own calls (a push, getprop) are not what --timeout limits: their message names no flag
    with pytest.raises(AdbTimeout) as e:
        Adb(timeout_s=0.5).shell("A", "benchmark_model --graph=x")
    assert "within 0.5 s" in str(e.value) and "--timeout" not in str(e.value)
    # the search measures through the same runner and has no --timeout: no flag is named there
    assert BenchOptions.for_profiling(ProfileSettings()).timeout_flag is None
    # every command whose messages name --timeout has it
    for command in ("profile", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--timeout" in capsys.readouterr().out


def test_hints_name_only_flags_of_the_command_at_hand():
    """The same sweep for the other flags phone messages name: --benchmark-binary and --adb exist on
    devices / bench / profile, not on search (which measures through the same code), and the search's
    thread count is --latency-threads (its --threads are torch's)."""
    from nasctl.android_bench.adb import INSTALL_HINT
    from nasctl.android_bench.binary import where_to_get
    from nasctl.profiling.backends import check_threads
    from nasctl.profiling.device import host_device
    from nasctl.profiling.errors import ProfilingError

    assert "(nasctl bench and profile also take --benchmark-binary PATH)" in where_to_get("arm64-v8a")
    assert "(nasctl devices, bench and profile also take --adb PATH)" in INSTALL_HINT
    with pytest.raises(ProfilingError, match=r"^--latency-threads must be between 1 and"):
        check_threads(10_000, host_device(), "--latency-threads")
    with pytest.raises(ProfilingError, match=r"^--threads must be between 1 and"):
        check_threads(10_000)
