"""Profiling: real runtimes timing real model files, the SQLite store under concurrent writers, lookup
tables that add up to the models they predict, and latency as a search objective from the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasctl.cli import main
from nasctl.nas.data import dataset_info
from nasctl.nas.space import load_space
from nasctl.profiling import (
    MeasurementStore,
    ProfileSettings,
    ProfilingError,
    Scope,
    genome_entries,
    measure,
    sample_genomes,
    space_entries,
)
from nasctl.profiling.result import LatencyResult, summarize

TINY_SPACE = textwrap.dedent("""\
    # three searchable layers at 8x8 and 4x4: skips, two blocks, width choices and a stride; 50 subnets
    name: tiny
    stem_channels: 8
    stem_stride: 1
    stages:
      - {layers: 2, stride: 1, widths: [8, 16]}
      - {layers: 1, stride: 2, widths: [16]}
    blocks: [conv_k3, fir_k3_e2, skip]
    head_channels: 0
    """)
QUICK = ["--runs", "20", "--warmup", "2", "--min-seconds", "0"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nasctl: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from nasctl.export.onnx import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, torch.rand(1, 1, 8, 8), path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny space, its lookup table (float32, measured and calibrated for real) and a store."""
    from nasctl.profiling.tasks import build_lut

    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(TINY_SPACE)
    space, info = load_space(str(root / "tiny.yaml")), dataset_info("digits")
    store_path = root / "store.sqlite"
    with MeasurementStore(store_path) as store:
        facts = build_lut(space, info, store, "float32", calibration_subnets=4)
    return {"root": root, "space": space, "info": info, "store": store_path, "facts": facts}


# --- results and decomposition (pure) ------------------------------------------------------
def test_summary_statistics_against_numpy():
    t = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = summarize(t)
    assert s["mean_ms"] == pytest.approx(22.0) and s["p50_ms"] == 3.0 and s["min_ms"] == 1.0
    assert s["p90_ms"] == pytest.approx(np.percentile(t, 90)) and s["std_ms"] == pytest.approx(
        np.std(t, ddof=1)
    )
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(
    "space_name,dataset", [("tam", "cifar10"), ("digits", "digits"), ("digits-ir", "digits")]
)
def test_every_subnet_is_covered_by_the_table(space_name, dataset):
    space, info = load_space(space_name), dataset_info(dataset)
    keys = {e.key for e in space_entries(space, info)}
    rng = np.random.default_rng(0)
    for g in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(300)]:
        used = genome_entries(space, g, info)
        assert {e.key for e in used} <= keys, g.encode()
        assert len(used) == 2 + sum(1 for gene in g.layers if gene.op != "skip")


@pytest.mark.parametrize("space_name,dataset", [("tam", "cifar10"), ("digits", "digits")])
def test_table_entries_are_the_subnet_split_into_layers(space_name, dataset):
    """The single-layer models hold exactly the subnet's parameters (and their outputs chain)."""
    space, info = load_space(space_name), dataset_info(dataset)
    for g in sample_genomes(space, 6, seed=3):
        entries = genome_entries(space, g, info)
        modules = [e.build(info).eval() for e in entries]
        params = sum(p.numel() for m in modules for p in m.parameters())
        assert params == space.cost(g, info.in_channels, info.resolution, info.num_classes)[0], g.encode()
        x = torch.rand(1, info.in_channels, info.resolution, info.resolution)
        with torch.no_grad():
            for e, m in zip(entries, modules):
                assert tuple(x.shape) == e.input_shape
                x = m(x)
        assert tuple(x.shape) == (1, info.num_classes)


def test_calibration_fit_is_relative():
    from nasctl.profiling.lut import accuracy, fit_calibration

    raw, n = np.array([0.01, 0.02, 0.1, 1.0, 2.0]), np.array([3, 5, 4, 9, 12])
    fit = fit_calibration(raw, n, 1.1 * raw - 0.002 * n + 0.03)
    assert fit["slope"] == pytest.approx(1.1) and fit["per_layer"] == pytest.approx(-0.002)
    assert fit["intercept"] == pytest.approx(0.03)
    assert fit["within_10pct"] == 1.0 and fit["mape_pct"] == pytest.approx(0.0, abs=1e-9)
    acc = accuracy([1.0, 1.2, 0.5], [1.0, 1.0, 1.0])
    assert acc["within_10pct"] == pytest.approx(1 / 3) and acc["mape_pct"] == pytest.approx(100 * 0.7 / 3)


# --- host backends on real files -----------------------------------------------------------
def test_onnxruntime_profile_json_and_store(onnx_model, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    rc, out, err = run_cli(["profile", onnx_model, "--json", "--store", store, *QUICK], capsys)
    assert rc == 0, err
    r = json.loads(out)
    for k in (
        "mean_ms",
        "p50_ms",
        "p90_ms",
        "std_ms",
        "n_runs",
        "n_warmup",
        "threads",
        "backend",
        "runtime_version",
        "device",
        "peak_memory_bytes",
        "file_bytes",
    ):
        assert k in r, k
    assert r["backend"] == "onnxruntime" and r["n_runs"] >= 20 and r["n_warmup"] == 2
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] and r["file_bytes"] == onnx_model.stat().st_size
    assert 10 * 2**20 < r["peak_memory_bytes"] < 2**30  # the worker's own memory, not the CLI's torch
    assert r["extra"]["input_shape"] == [1, 1, 8, 8] and r["affinity"]
    with MeasurementStore(store) as s:
        rows = s.latest(
            Scope(r["device_fingerprint"], "onnxruntime", r["runtime_version"], "float32", 1), "model"
        )
    from nasctl.core import sha256_file

    assert list(rows) == [sha256_file(onnx_model)] and rows[sha256_file(onnx_model)].p50_ms == r["p50_ms"]
    rc, out, _ = run_cli(["profile", onnx_model, "--store", store, *QUICK], capsys)
    assert rc == 0 and "p50" in out and "peak memory" in out


def test_torch_backend_times_a_torchscript_file(tmp_path):
    model = torch.jit.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.rand(1, 3, 16, 16))
    ok, bare = tmp_path / "m.pt", tmp_path / "bare.pt"
    torch.jit.save(model, str(ok), _extra_files={"nasctl.json": json.dumps({"input_shape": [1, 3, 16, 16]})})
    torch.jit.save(model, str(bare))
    r = measure([ok], "torch", ProfileSettings(runs=10, warmup=1, min_seconds=0))[0]
    assert r.backend == "torch" and r.p50_ms > 0 and r.extra["input_shape"] == [1, 3, 16, 16]
    with pytest.raises(ProfilingError, match="input shape"):
        measure([bare], "torch", ProfileSettings(runs=10, warmup=1, min_seconds=0))


def test_litert_times_float_and_int8_files(tmp_path):
    from nasctl.profiling.convert import ToConvert, convert_modules
    from nasctl.profiling.lut import LutEntry

    info = dataset_info("digits")
    e = LutEntry("block", "conv_k3", 8, 16, 1, 8)
    files = {
        p: convert_modules([ToConvert("m", lambda: e.build(info), e.input_shape)], tmp_path / p, p)["m"]
        for p in ("float32", "int8")
    }
    res = {
        p: measure([f], None, ProfileSettings(runs=20, warmup=2, min_seconds=0))[0] for p, f in files.items()
    }
    assert res["int8"].extra["input_dtype"] == "int8" and res["float32"].extra["input_dtype"] == "float32"
    assert all(r.backend == "litert" and r.p50_ms > 0 for r in res.values())
    assert res["int8"].extra["input_shape"] == [1, 8, 8, 8]  # NHWC after onnx2tf


@pytest.mark.parametrize(
    "case", ["missing", "empty", "corrupt", "unknown-backend", "wrong-backend", "threads0", "suffix"]
)
def test_bad_model_input_is_one_line(case, onnx_model, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    with MeasurementStore(store) as s:
        s.add(
            "model", "earlier", LatencyResult(1, 1, 1, 0, 1, 5, 1, 1, "litert", "v", "host", "fp"), "float32"
        )
    bad = tmp_path / "bad.tflite"
    args, needle = {
        "missing": ([tmp_path / "nope.tflite"], "does not exist"),
        "empty": ([bad], "empty"),
        "corrupt": ([bad], "cannot measure"),
        "unknown-backend": ([onnx_model, "--backend", "tflite"], "unknown backend"),
        "wrong-backend": ([onnx_model, "--backend", "litert"], "measures .tflite"),
        "threads0": ([onnx_model, "--threads", "0"], "--threads"),
        "suffix": ([tmp_path / "notes.txt"], "not a model file"),
    }[case]
    bad.write_bytes(b"" if case == "empty" else b"TFL3" + bytes(range(200)))
    (tmp_path / "notes.txt").write_text("hello")
    rc, _, err = run_cli(["profile", *args, "--store", store, *QUICK], capsys)
    assert_one_line(rc, err, needle)
    with MeasurementStore(store) as s:
        assert s.count() == 1  # nothing lost, nothing half-written


def test_a_file_that_is_not_a_store_is_left_alone(onnx_model, tmp_path, capsys):
    notdb = tmp_path / "notes.sqlite"
    notdb.write_text("my notes, not a database\n" * 100)
    before = notdb.read_bytes()
    rc, _, err = run_cli(["profile", onnx_model, "--store", notdb, *QUICK], capsys)
    assert_one_line(rc, err, "not a nasctl measurement store", "--store")
    assert notdb.read_bytes() == before
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE contacts (name TEXT)")
    rc, _, err = run_cli(["profile", onnx_model, "--store", other, *QUICK], capsys)
    assert_one_line(rc, err, "another program")


def test_a_locked_store_is_one_line_and_loses_nothing(onnx_model, tmp_path, capsys, monkeypatch):
    import nasctl.profiling.store as store_mod

    path = tmp_path / "s.sqlite"
    with MeasurementStore(path) as s:
        s.add(
            "model", "earlier", LatencyResult(1, 1, 1, 0, 1, 5, 1, 1, "litert", "v", "host", "fp"), "float32"
        )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sqlite3, sys, time
        c = sqlite3.connect({str(path)!r}, isolation_level=None)
        c.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.5)
        rc, _, err = run_cli(["profile", onnx_model, "--store", path, *QUICK], capsys)
        assert_one_line(rc, err, "locked by another process")
    finally:
        holder.kill()
        holder.wait()
    with MeasurementStore(path) as s:
        assert s.count() == 1


WRITER = textwrap.dedent("""
    import sys
    from nasctl.profiling.result import LatencyResult
    from nasctl.profiling.store import MeasurementStore
    name, n = sys.argv[1], int(sys.argv[2])
    with MeasurementStore(sys.argv[3]) as s:
        for i in range(n):
            r = LatencyResult(i, i, i, 0, i, 1, 0, 1, "litert", "v", "host", "fp", model_path=f"{name}-{i}")
            s.add("block", f"{name}-{i}", r, "int8")
    """)


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    path = tmp_path / "s.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name, "300", str(path)]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with MeasurementStore(path) as s:
        rows = s.latest(Scope("fp", "litert", "v", "int8", 1), "block")
        assert s.count() == 600
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(rows) == {f"{n}-{i}" for n in "ab" for i in range(300)}
    assert all(rows[f"a-{i}"].p50_ms == i for i in range(300))


# --- lookup tables, prediction, the search objective -----------------------------------------
def test_build_lut_measures_calibrates_and_resumes(tiny, capsys):
    from nasctl.profiling.lut import host_scope, load_table

    facts = tiny["facts"]
    assert facts["entries"] == len(space_entries(tiny["space"], tiny["info"])) == 14
    assert facts["measured_now"] == 14 and facts["calibration"]["n"] == 4
    with MeasurementStore(tiny["store"]) as s:
        table = load_table(s, tiny["space"], tiny["info"], host_scope("float32"))
        assert len(table.entries) == 14 and all(v > 0 for v in table.entries.values()) and table.fit
        n_rows = s.count()
    # a second build measures nothing again (the table is there); it only re-calibrates
    rc, out, err = run_cli(
        [
            "profile",
            "--build-lut",
            "--space",
            tiny["root"] / "tiny.yaml",
            "--device",
            "host",
            "--dataset",
            "digits",
            "--calibration-subnets",
            "2",
            "--store",
            tiny["store"],
            "--json",
        ],
        capsys,
    )
    assert rc == 0, err
    again = json.loads(out)
    assert again["measured_now"] == 0 and again["calibration"]["n"] == 2
    with MeasurementStore(tiny["store"]) as s:
        assert s.count() == n_rows  # the calibration subnets were measured before: cached by genome


def test_predict_and_measure_a_genome(tiny, capsys):
    g = "conv_k3_c16-fir_k3_e2_c8-conv_k3_c16"
    space = ["--space", tiny["root"] / "tiny.yaml", "--dataset", "digits"]
    rc, out, err = run_cli(
        ["profile", "--arch", g, *space, "--measure", "--json", "--store", tiny["store"]], capsys
    )
    assert rc == 0, err
    r = json.loads(out)
    assert r["genome"] == g and r["predicted_ms"] > 0 and r["measured_ms"] > 0
    # microsecond models sit in timer noise: the table must still be the right order of magnitude
    assert 0.5 < r["predicted_ms"] / r["measured_ms"] < 2.0
    rc, _, err = run_cli(
        ["profile", "--arch", "conv_k3_c99-skip-conv_k3_c16", *space, "--store", tiny["store"]], capsys
    )
    assert_one_line(rc, err, "not a genome")
    rc, _, err = run_cli(["profile", "--arch", g, *space, "--int8", "--store", tiny["store"]], capsys)
    assert_one_line(rc, err, "no lookup table", "nasctl profile --build-lut", "--int8")
    rc, _, err = run_cli(
        ["profile", "--arch", g, "--space", tiny["root"] / "tiny.yaml", "--store", tiny["store"]], capsys
    )
    assert_one_line(rc, err, "add --dataset")
    rc, _, err = run_cli(["profile", "--arch", g, "--space", "tiny-nope", "--store", tiny["store"]], capsys)
    assert_one_line(rc, err, "unknown search space")


@pytest.fixture(scope="module")
def tiny_supernet(tiny):
    from nasctl.nas.training.supernet import TrainConfig, train_supernet

    cfg = TrainConfig(
        space=str(tiny["root"] / "tiny.yaml"),
        limit_train=128,
        epochs=1,
        eval_size=20,
        eval_steps=1,
        attack_steps=1,
        run_root=str(tiny["root"] / "runs"),
    )
    return train_supernet(cfg)[0]


def test_search_with_latency_as_the_fourth_objective(tiny, tiny_supernet, capsys):
    quick = tiny["root"] / "quick.yaml"
    quick.write_text("final_steps: 1\nfinal_restarts: 1\ncalib_batches: 1\n")
    args = [
        "search",
        "--config",
        quick,
        "--supernet",
        tiny_supernet,
        "--objectives",
        "clean_acc,adv_acc,params,latency_ms",
        "--latency-source",
        "lut:host",
        "--latency-precision",
        "float32",
        "--store",
        tiny["store"],
        "--pop-size",
        "4",
        "--generations",
        "2",
        "--val-size",
        "30",
        "--pgd-steps",
        "1",
        "--finetune-members",
        "0",
        "--run-root",
        tiny["root"] / "search",
    ]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    pareto = next((tiny["root"] / "search").rglob("pareto.json"))
    doc = json.loads(pareto.read_text())
    assert doc["objectives"][-1] == "latency_ms" and doc["latency"]["source"] == "lut:host"
    assert doc["latency"]["precision"] == "float32" and doc["latency"]["calibration"]["n"] >= 2
    assert doc["front"] and all(r["latency_ms"] > 0 for r in doc["front"])
    archive = [json.loads(ln) for ln in (pareto.parent / "archive.jsonl").read_text().splitlines()]
    assert all(r["latency_ms"] > 0 for r in archive)
    assert "latency ms" in (pareto.parent / "summary.md").read_text()
    assert (pareto.parent / "front_projections.png").stat().st_size > 0
    # the same latency the table predicts for the genome, not a number made up on the way
    from nasctl.profiling.lut import host_scope, load_table

    with MeasurementStore(tiny["store"]) as s:
        table = load_table(s, tiny["space"], tiny["info"], host_scope("float32"))
    for r in doc["front"]:
        assert r["latency_ms"] == pytest.approx(table.predict_ms(tiny["space"].parse(r["genome"])))
    # the budget is a constraint: every member of the front meets it
    limit = sorted(r["latency_ms"] for r in archive)[len(archive) // 2]
    rc, _, err = run_cli(args[:-1] + [tiny["root"] / "search-limited", "--max-latency-ms", limit], capsys)
    assert rc == 0, err
    doc = json.loads(next((tiny["root"] / "search-limited").rglob("pareto.json")).read_text())
    assert doc["front"] and all(r["latency_ms"] <= limit for r in doc["front"])


def test_latency_without_a_source_or_table_is_one_line(tiny, tiny_supernet, tmp_path, capsys):
    base = [
        "search",
        "--supernet",
        tiny_supernet,
        "--run-root",
        tmp_path,
        "--pop-size",
        "2",
        "--generations",
        "1",
    ]
    rc, _, err = run_cli(base + ["--objectives", "clean_acc,latency_ms"], capsys)
    assert_one_line(rc, err, "latency source", "nasctl profile --build-lut")
    rc, _, err = run_cli(base + ["--max-latency-ms", "1"], capsys)
    assert_one_line(rc, err, "--max-latency-ms", "--latency-source")
    rc, _, err = run_cli(
        base + ["--objectives", "clean_acc,latency_ms", "--latency-source", "lutt:host"], capsys
    )
    assert_one_line(rc, err, "KIND:DEVICE")
    rc, _, err = run_cli(
        base
        + [
            "--objectives",
            "clean_acc,latency_ms",
            "--latency-source",
            "lut:host",
            "--store",
            tmp_path / "empty.sqlite",
        ],
        capsys,
    )
    assert_one_line(
        rc,
        err,
        "no lookup table",
        "nasctl profile --build-lut --space YOUR_SPACE.yaml (the file of "
        "space 'tiny') --dataset digits --device host --int8",
    )
    assert not list(Path(tmp_path).rglob("pareto.json"))


def test_measure_source_times_whole_models_once(tiny):
    from nasctl.profiling import open_latency_source

    space = tiny["space"]
    pair = ("conv_k3_c8-skip-fir_k3_e2_c16", "fir_k3_e2_c16-conv_k3_c16-conv_k3_c16")
    genomes = [space.parse(g) for g in pair]
    with MeasurementStore(tiny["store"]) as s:
        src = open_latency_source("measure:host", s, space, tiny["info"], precision="float32")
        first = [src(g) for g in genomes]
        n = s.count()
        assert [src(g) for g in genomes] == first and s.count() == n  # cached by genome: nothing re-measured
    assert all(v > 0 for v in first) and src.provenance["source"] == "measure:host"


def test_a_phones_table_feeds_the_search(tiny, tiny_supernet, tmp_path, monkeypatch, capsys):
    """--build-lut --device adb:SERIAL times every layer with the phone's benchmark_model (a fake adb
    answering with a real captured output), and --latency-source lut:adb:SERIAL searches with it."""
    from nasctl.android_bench.adb import Adb
    from nasctl.android_bench.device import device_info
    from nasctl.core import sha256_file

    from .test_android_bench import SAMPLE, Phones, elf

    phones = Phones(tmp_path / "adbworld").add("R58M12ABCDE")
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(phones.config))
    monkeypatch.setenv("PATH", f"{phones.bin}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binary = tmp_path / "cache" / "nasctl" / "benchmark_model" / "arm64-v8a" / "benchmark_model"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(elf(183))
    store = tmp_path / "phone.sqlite"
    space = ["--space", tiny["root"] / "tiny.yaml", "--dataset", "digits"]
    rc, out, err = run_cli(["profile", "--build-lut", *space, "--device", "adb:R58M12ABCDE",
                            "--calibration-subnets", "3", "--store", store, "--json"], capsys)
    assert rc == 0, err
    facts = json.loads(out)
    assert facts["device"] == "adb:R58M12ABCDE" and facts["entries"] == facts["measured_now"] == 14
    info = device_info(Adb(), "R58M12ABCDE")[0]
    scope = Scope(info.fingerprint, "adb", f"benchmark_model sha256:{sha256_file(binary)[:12]}", "float32", 1)
    with MeasurementStore(store) as s:
        blocks = s.latest(scope, "block")
    assert len(blocks) == 14 and all(r.p50_ms == pytest.approx(1.88574) for r in blocks.values())
    assert all(r.extra["raw_output"] == [SAMPLE.read_text()] for r in blocks.values())
    pushed = [c for c in phones.calls("R58M12ABCDE") if c[2] == "push" and c[3].endswith(".tflite")]
    assert len(pushed) == 14 + 3  # every layer, then the calibration subnets, each once

    rc, _, err = run_cli(["search", "--supernet", tiny_supernet, "--objectives",
                          "clean_acc,adv_acc,latency_ms", "--latency-source", "lut:adb:R58M12ABCDE",
                          "--latency-precision", "float32", "--store", store, "--pop-size", "4",
                          "--generations", "1", "--val-size", "20", "--pgd-steps", "1", "--finetune-members",
                          "0", "--run-root", tmp_path / "runs"], capsys)
    assert rc == 0, err
    doc = json.loads(next((tmp_path / "runs").rglob("pareto.json")).read_text())
    assert doc["latency"]["source"] == "lut:adb:R58M12ABCDE" and doc["latency"]["backend"] == "adb"
    assert doc["latency"]["device"]["model"] == info.model
    assert all(r["latency_ms"] > 0 for r in doc["front"])
    rc, _, err = run_cli(["profile", "--arch", "conv_k3_c8-skip-conv_k3_c16", *space, "--device", "adb:NOPE",
                          "--store", store], capsys)
    assert_one_line(rc, err, "NOPE")
