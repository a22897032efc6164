"""``nasctl devices``, ``nasctl bench``, ``nasctl profile --build-lut --device adb:SERIAL`` and
``nasctl search --latency-source lut:adb:SERIAL`` through the REAL adb client (Debian's ``adb``;
skipped, with the reason, where it is not installed) against an emulated phone.

The phone is :class:`tests.adbd_emulator.EmulatedDevice`, an adbd-compatible server on 127.0.0.1 that
``adb connect`` reaches like a phone with Wi-Fi debugging: every ``adb shell``, ``push`` and ``devices``
nasctl runs goes through the adb client, the adb server and the ADB transport protocol. Its
``/data/local/tmp`` is a host folder (the "sandbox"), its shell is the host's ``/bin/sh`` and its
``getprop`` answers an arm64-v8a phone's properties.

What is not a phone, and how the tests keep that honest:

* the binary pushed is :func:`tests.test_android_bench.elf` (183): an ELF header for AArch64 and
  nothing else, so nasctl's ABI check passes for the arm64-v8a the emulator claims. The host cannot
  execute it; the emulator plays the kernel and runs ``python tests/fake_benchmark_model.py`` in its
  place (only once the pushed file is executable: nasctl's ``chmod 755`` is needed, as on a phone);
* that stand-in times the model for real with LiteRT on the host and prints benchmark_model's format;
  the tests give it ``--warmup_min_secs=0`` first (the real default, 0.5 s of warm-up per run, would
  only make them slower), and nasctl's own flags follow;
* the adb server runs on a port of its own (``ANDROID_ADB_SERVER_PORT``) with a throw-away ``HOME``
  for its key, and is killed at the end of the module, after ``adb disconnect``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasctl.android_bench.binary import cache_path
from nasctl.cli import main
from nasctl.core import sha256_file
from nasctl.profiling.store import MeasurementStore, Scope

from .adbd_emulator import EmulatedDevice
from .test_android_bench import elf
from .test_profiling import TINY_SPACE  # the same 14-layer space as the host's table tests

pytestmark = pytest.mark.skipif(
    shutil.which("adb") is None, reason="Debian's adb is not installed (apt-get install adb; .ci/run does)"
)
STAND_IN = [sys.executable, str(Path(__file__).with_name("fake_benchmark_model.py")), "--warmup_min_secs=0"]


def adb(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["adb", *args], capture_output=True, text=True, timeout=timeout)


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


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory):
    """A private adb server (own port, own HOME for its key); killed at the end of the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("adb-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANDROID_ADB_SERVER_PORT", str(port))
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        started = subprocess.run(["adb", "start-server"], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "HOME": str(home)})
        assert started.returncode == 0, started.stderr
        yield port
        adb("kill-server")


@pytest.fixture
def phone(adb_server, tmp_path):
    """Start an emulated phone and ``adb connect`` it; ``adb disconnect`` and stop it afterwards."""
    made: list[EmulatedDevice] = []

    def start(**kwargs) -> EmulatedDevice:
        device = EmulatedDevice(tmp_path / f"phone{len(made)}", programs={"benchmark_model": STAND_IN},
                                **kwargs).start()
        made.append(device)
        out = adb("connect", device.serial)
        # adb connect exits 0 even when it failed: its output says what happened
        expected = "failed to authenticate" if kwargs.get("unauthorized") else "connected to"
        assert out.returncode == 0 and expected in out.stdout, out
        return device

    yield start
    for device in made:
        adb("disconnect", device.serial)
        device.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Two small float32 TFLite models from nasctl's own converter (torch -> ONNX -> TFLite)."""
    from torch import nn

    from nasctl.profiling.convert import ToConvert, convert_modules

    def small():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 10))

    def larger():
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    out = tmp_path_factory.mktemp("models")
    files = convert_modules([ToConvert("small_float32", small, (1, 1, 16, 16)),
                             ToConvert("larger_float32", larger, (1, 1, 16, 16))], out, "float32")
    return [files["small_float32"], files["larger_float32"]]


@pytest.fixture
def arm64_binary(tmp_path) -> Path:
    p = tmp_path / "android_aarch64_benchmark_model"
    p.write_bytes(elf(183))  # an AArch64 ELF header: what nasctl checks; the emulator runs the stand-in
    return p


def stored(store: Path, fingerprint: str, binary: Path, precision: str = "float32", threads: int = 1):
    runtime = f"benchmark_model sha256:{sha256_file(binary)[:12]}"
    scope = Scope(fingerprint, "adb", runtime, precision, threads)
    with MeasurementStore(store) as s:
        return s.latest(scope, "model")


def bench_args(models, device, binary, store, *extra):
    return ["bench", *models, "--device", device.serial, "--benchmark-binary", binary, "--runs", "20",
            "--warmup", "3", "--min-seconds", "0", "--repeats", "1", "--cooldown", "0", "--store", store,
            *extra]


# --- the emulator itself, through adb ---------------------------------------------------------------
def test_the_emulator_speaks_adb(phone, tmp_path):
    """What nasctl relies on, checked with adb alone: push/pull byte for byte (parent folders made, mode
    kept), shell exit codes and separate streams, paths outside /data/local/tmp refused, and a pushed
    stand-in program that runs only once it is executable."""
    device = phone()
    s = device.serial
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(700_000))  # several sync DATA chunks and several WRTE payloads
    assert adb("-s", s, "push", str(blob), "/data/local/tmp/a/b/blob.bin").returncode == 0
    assert adb("-s", s, "pull", "/data/local/tmp/a/b/blob.bin", str(tmp_path / "back.bin")).returncode == 0
    assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
    assert (device.sandbox / "a" / "b" / "blob.bin").read_bytes() == blob.read_bytes()
    r = adb("-s", s, "shell", "echo out; echo err >&2; ls /data/local/tmp/a/b; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\nblob.bin\n", "err\n")
    assert adb("-s", s, "shell", "getprop ro.product.cpu.abi").stdout == "arm64-v8a\n"
    refused = adb("-s", s, "push", str(blob), "/system/bin/x")
    assert refused.returncode == 1 and "Permission denied" in refused.stdout + refused.stderr
    program = tmp_path / "benchmark_model"
    program.write_bytes(elf(183))
    adb("-s", s, "push", str(program), "/data/local/tmp/bm/benchmark_model")
    r = adb("-s", s, "shell", "/data/local/tmp/bm/benchmark_model --graph=/data/local/tmp/none.tflite")
    assert r.returncode == 126 and r.stderr == (  # not executable yet: the shell says so
        "/system/bin/sh: /data/local/tmp/bm/benchmark_model: can't execute: Permission denied\n")
    r = adb("-s", s, "shell", "chmod 755 /data/local/tmp/bm/benchmark_model && "
            "/data/local/tmp/bm/benchmark_model --graph=/data/local/tmp/none.tflite")
    assert r.returncode == 1 and "Failed to mmap model /data/local/tmp/none.tflite" in r.stdout


# --- nasctl devices ------------------------------------------------------------------------------
def test_devices_lists_the_emulated_phone_with_its_fingerprint(phone, capsys):
    from nasctl.profiling.device import DeviceInfo

    device = phone()
    rc, out, err = cli(["devices", "--json"], capsys)
    assert rc == 0, err
    (listed,) = [d for d in json.loads(out) if d["serial"] == device.serial]
    assert listed["state"] == "device" and listed["error"] is None
    assert listed["attrs"]["model"] == "adbd_emulator" and listed["attrs"]["product"] == "nasctl_emulator"
    info = listed["info"]
    assert (info["model"], info["board"], info["abi"], info["os"], info["cores"]) == (
        "adbd emulator", "host", "arm64-v8a", "Android 14 (SDK 34)", 8)
    expected = DeviceInfo(name=device.serial, model="adbd emulator", board="host", abi="arm64-v8a",
                          os="Android 14 (SDK 34)", cores=8)
    assert listed["fingerprint"] == expected.fingerprint
    assert listed["props"]["manufacturer"] == "nasctl tests"
    assert device.shell_commands() == ["getprop", "cat /sys/devices/system/cpu/possible"]
    rc, out, _ = cli(["devices"], capsys)  # the table
    assert rc == 0 and device.serial in out and expected.fingerprint in out


# --- nasctl bench ----------------------------------------------------------------------------------
def test_bench_pushes_runs_parses_stores_and_cleans_up(phone, models, arm64_binary, tmp_path, capsys):
    device = phone()
    store, raw = tmp_path / "m.sqlite", tmp_path / "raw"
    rc, out, err = cli(bench_args(models[:1], device, arm64_binary, store, "--repeats", "2", "--out", raw),
                       capsys)
    assert rc == 0, err
    assert f"{device.serial} small_float32.tflite: p50" in out and "schedutil" in out
    assert "thermal 41.2 -> 41.2 C" in out
    shell = device.shell_commands()  # before nasctl devices adds its own

    fingerprint = json.loads(cli(["devices", "--json"], capsys)[1])[0]["fingerprint"]
    (r,) = stored(store, fingerprint, arm64_binary).values()
    assert r.backend == "adb" and r.device == device.serial and r.model_path == str(models[0])
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms and r.n_runs >= 40 and r.extra["xnnpack"] is True
    assert r.extra["binary"]["reported_version"] == __import__("ai_edge_litert").__version__
    assert r.extra["governor"] == "schedutil" and r.extra["thermal"]["before"]["max_c"] == 41.2
    assert r.extra["thermal"]["before"]["status"] == 0 and r.extra["device_info"]["cores"] == 8
    # the raw output is the stand-in's, device paths and all, and the stored numbers are parsed from it
    assert len(r.extra["raw_output"]) == 2
    run_dir = next(c for c in shell if c.startswith("mkdir -p")).split()[-1]
    assert run_dir.startswith("/data/local/tmp/nasctl/")
    for text, parsed in zip(r.extra["raw_output"], r.extra["parsed"]):
        assert f"INFO: Graph: [{run_dir}/model_0.tflite]" in text
        assert "Created TensorFlow Lite XNNPACK delegate" in text  # LiteRT's own line, from stderr
        avg = text.split("Inference (avg): ")[1].split()[0]
        assert parsed["inference_avg_us"] == float(avg) and parsed["count"] >= 20
    assert r.extra["repeat_avg_ms"] == [p["inference_avg_us"] / 1000 for p in r.extra["parsed"]]
    assert sorted(p.name for p in (raw / device.serial.replace(":", "_")).iterdir()) == [
        "00-small_float32.json", "00-small_float32.run1.txt", "00-small_float32.run2.txt"]

    # what went over the wire: both files byte-identical, the binary made executable, the exact command
    assert [(p, h) for p, _, h in device.received] == [
        (f"{run_dir}/benchmark_model", sha256_file(arm64_binary)),
        (f"{run_dir}/model_0.tflite", sha256_file(models[0])),
    ]
    assert f"chmod 755 {run_dir}/benchmark_model" in shell
    assert [c for c in shell if "--graph=" in c] == [
        f"{run_dir}/benchmark_model --graph={run_dir}/model_0.tflite --num_threads=1 --num_runs=20 "
        "--warmup_runs=3 --min_secs=0 --use_xnnpack=true"] * 2
    assert shell[-1] == f"rm -rf {run_dir}"
    assert list((device.sandbox / "nasctl").iterdir()) == []  # nothing left on the phone


def test_disconnect_mid_run_keeps_the_finished_model(phone, models, arm64_binary, tmp_path, capsys):
    """The phone is unplugged when the second model's benchmark starts: the first is stored, the error
    is one line, and adb then lists the phone as offline (it keeps trying to reconnect)."""
    device = phone(disconnect_after=1, count="--graph=")
    store, raw = tmp_path / "m.sqlite", tmp_path / "raw"
    fingerprint = json.loads(cli(["devices", "--json"], capsys)[1])[0]["fingerprint"]
    rc, out, err = cli(bench_args(models, device, arm64_binary, store, "--out", raw), capsys)
    one_error_line(rc, err, f"lost the connection to phone '{device.serial}'", "reconnect it")
    assert "small_float32.tflite: p50" in out and "larger_float32" not in out
    (r,) = stored(store, fingerprint, arm64_binary).values()
    assert r.model_path == str(models[0]) and r.p50_ms > 0
    assert sorted(p.name for p in (raw / device.serial.replace(":", "_")).iterdir()) == [
        "00-small_float32.json", "00-small_float32.run1.txt"]
    graphs = [c for c in device.shell_commands() if "--graph=" in c]
    assert device.unplugged.is_set() and len(graphs) == 2 and "model_1.tflite" in graphs[1]  # the one cut off
    # the phone is gone: nasctl could not remove its folder (a real phone keeps it too) and says so next time
    (left,) = (device.sandbox / "nasctl").iterdir()
    assert sorted(p.name for p in left.iterdir()) == ["benchmark_model", "model_1.tflite"]
    rc, out, _ = cli(["devices", "--json"], capsys)
    (listed,) = [d for d in json.loads(out) if d["serial"] == device.serial]
    assert rc == 0 and listed["state"] == "offline" and "adb reconnect" in listed["error"]
    rc, _, err = cli(bench_args(models[:1], device, arm64_binary, store), capsys)
    one_error_line(rc, err, f"'{device.serial}' is offline")
    assert len(stored(store, fingerprint, arm64_binary)) == 1


def test_unauthorized_unknown_serial_and_dead_port_exit_2_with_one_line(phone, models, arm64_binary,
                                                                          tmp_path, capsys):
    device = phone(unauthorized=True)
    base = bench_args(models[:1], device, arm64_binary, tmp_path / "m.sqlite")
    rc, _, err = cli(base, capsys)
    one_error_line(rc, err, f"'{device.serial}' is unauthorized", "Allow USB debugging")
    rc, out, _ = cli(["devices", "--json"], capsys)
    (listed,) = [d for d in json.loads(out) if d["serial"] == device.serial]
    assert rc == 0 and listed["state"] == "unauthorized" and listed["info"] is None
    assert device.commands == []  # nothing ran on it
    with socket.socket() as s:  # a port nothing listens on: adb connect fails and still exits 0
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    connect = adb("connect", dead)
    assert connect.returncode == 0 and "failed to connect" in connect.stdout
    rc, _, err = cli([*base[:3], dead, *base[4:]], capsys)
    one_error_line(rc, err, f"device '{dead}' not found", f"{device.serial} (unauthorized)")
    if (tmp_path / "m.sqlite").exists():
        with MeasurementStore(tmp_path / "m.sqlite") as s:
            assert s.count() == 0


def test_a_hung_benchmark_times_out_and_the_phone_is_cleaned(phone, models, arm64_binary, tmp_path, capsys):
    device = phone(hang="--graph=")
    rc, _, err = cli(bench_args(models[:1], device, arm64_binary, tmp_path / "m.sqlite", "--timeout", "1"),
                     capsys)
    one_error_line(rc, err, "did not answer within 1 s", f"phone '{device.serial}'")
    assert device.shell_commands()[-1].startswith("rm -rf /data/local/tmp/nasctl/")
    assert list((device.sandbox / "nasctl").iterdir()) == []


# --- a phone's lookup table feeds the search -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_supernet(tmp_path_factory):
    from nasctl.nas.training.supernet import TrainConfig, train_supernet

    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(TINY_SPACE)
    cfg = TrainConfig(space=str(root / "tiny.yaml"), limit_train=128, epochs=1, eval_size=20, eval_steps=1,
                      attack_steps=1, run_root=str(root / "runs"))
    torch.manual_seed(0)
    return root, train_supernet(cfg)[0]


def test_profile_build_lut_and_search_on_the_emulated_phone(phone, tiny_supernet, tmp_path, capsys):
    root, supernet = tiny_supernet
    device = phone()
    target = f"adb:{device.serial}"
    binary = cache_path("arm64-v8a")  # under the module's XDG_CACHE_HOME
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(elf(183))  # the documented cache: nasctl search takes no --benchmark-binary
    store = tmp_path / "phone.sqlite"
    space = ["--space", root / "tiny.yaml", "--dataset", "digits"]
    rc, out, err = cli(["profile", "--build-lut", *space, "--device", target, "--calibration-subnets", "3",
                        "--store", store, "--json"], capsys)
    assert rc == 0, err
    facts = json.loads(out)
    assert facts["device"] == target and facts["entries"] == facts["measured_now"] == 14
    assert facts["calibration"]["n"] == 3
    runtime = f"benchmark_model sha256:{sha256_file(binary)[:12]}"
    assert facts["scope"] == [facts["device_info"]["fingerprint"], "adb", runtime, "float32", 1]
    with MeasurementStore(store) as s:
        blocks = s.latest(Scope(*facts["scope"]), "block")
    assert len(blocks) == 14 and all(r.p50_ms > 0 and r.device == device.serial for r in blocks.values())
    assert all("Inference timings in us" in r.extra["raw_output"][0] for r in blocks.values())
    graphs = [c for c in device.shell_commands() if "--graph=" in c]
    assert len(graphs) == 14 + 3 and all("--num_runs=30 --warmup_runs=5 --min_secs=0.1" in c for c in graphs)
    assert list((device.sandbox / "nasctl").iterdir()) == []

    rc, _, err = cli(["search", "--supernet", supernet, "--objectives", "clean_acc,adv_acc,latency_ms",
                      "--latency-source", f"lut:{target}", "--latency-precision", "float32", "--store", store,
                      "--pop-size", "4", "--generations", "1", "--val-size", "20", "--pgd-steps", "1",
                      "--finetune-members", "0", "--run-root", tmp_path / "runs"], capsys)
    assert rc == 0, err
    doc = json.loads(next((tmp_path / "runs").rglob("pareto.json")).read_text())
    assert doc["latency"]["source"] == f"lut:{target}" and doc["latency"]["backend"] == "adb"
    assert doc["latency"]["device"]["model"] == "adbd emulator"
    assert doc["latency"]["runtime_version"] == runtime
    assert doc["front"] and all(r["latency_ms"] > 0 for r in doc["front"])


def test_search_measures_every_candidate_on_the_emulated_phone(phone, tiny_supernet, tmp_path, capsys):
    """--latency-source adb:SERIAL: no table; each subnet the search evaluates is converted and timed on
    the phone once (cached by genome in the store), and that p50 is its latency objective."""
    _, supernet = tiny_supernet
    device = phone()
    binary = cache_path("arm64-v8a")  # under the module's XDG_CACHE_HOME
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(elf(183))
    store = tmp_path / "phone.sqlite"
    rc, _, err = cli(["search", "--supernet", supernet, "--objectives", "clean_acc,latency_ms",
                      "--latency-source", f"adb:{device.serial}", "--latency-precision", "float32",
                      "--store", store, "--pop-size", "2", "--generations", "1", "--val-size", "20",
                      "--pgd-steps", "1", "--finetune-members", "0", "--run-root", tmp_path], capsys)
    assert rc == 0, err
    pareto = next(tmp_path.rglob("pareto.json"))
    doc = json.loads(pareto.read_text())
    assert doc["latency"]["source"] == f"measure:adb:{device.serial}" and doc["latency"]["backend"] == "adb"
    assert doc["front"] and all(r["latency_ms"] > 0 for r in doc["front"])
    latency = doc["latency"]
    scope = Scope(latency["device_fingerprint"], "adb", latency["runtime_version"], "float32", 1)
    with MeasurementStore(store) as s:
        measured = {k.rsplit("|", 1)[1]: r for k, r in s.latest(scope, "genome").items()}
    archive = [json.loads(ln) for ln in (pareto.parent / "archive.jsonl").open()]
    for r in archive:  # every evaluated subnet's objective is the phone's measured p50 for that genome
        assert r["latency_ms"] > 0 and r["latency_ms"] == pytest.approx(measured[r["genome"]].p50_ms)
        assert measured[r["genome"]].device == device.serial
    graphs = [c for c in device.shell_commands() if "--graph=" in c]
    assert len(graphs) == len(measured) == len({r["genome"] for r in archive})  # each timed once
    assert list((device.sandbox / "nasctl").iterdir()) == []
