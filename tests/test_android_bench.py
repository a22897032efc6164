"""Android benchmarking: the benchmark_model parser on real captured outputs, and adb, device
selection, push/run/cleanup and the CLI through a fake ``adb`` executable.

The fake adb (:data:`FAKE_ADB`, written into ``tmp_path`` and put first on ``PATH``) answers the way
adb 1.0.41 does: ``devices -l`` listings, ``device 'X' not found``, ``no devices/emulators found``,
``more than one device/emulator``, ``device unauthorized``, ``device offline``; ``push``; ``shell``
for getprop, the CPU list, thermal zones, the governor, mkdir/chmod/rm and ``benchmark_model``,
whose output is one of the REAL samples in ``tests/data/benchmark_model/``. A phone can vanish after
N calls (``fail_after``) or hang in ``benchmark_model`` (``bench_sleep``). Every call is logged as
one JSON line, so tests assert what was pushed, run and removed.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from pathlib import Path

import pytest

from nasctl.android_bench import ADB_BACKEND
from nasctl.android_bench.adb import Adb, AdbError, parse_devices
from nasctl.android_bench.binary import check_tflite, elf_abis, find_binary
from nasctl.android_bench.device import choose_devices, count_cpus, device_info, list_devices, parse_getprop
from nasctl.android_bench.parse import KEYS, BenchmarkOutputError, parse_benchmark_output
from nasctl.android_bench.runner import BenchOptions, benchmark_command, summarize_runs
from nasctl.cli import main
from nasctl.core import sha256_file
from nasctl.profiling.device import DeviceInfo
from nasctl.profiling.errors import ProfilingError
from nasctl.profiling.store import MeasurementStore, Scope

DATA = Path(__file__).parent / "data" / "benchmark_model"
SAMPLE = DATA / "synaptics_vs680_nnapi_adb.txt"  # a real `adb shell benchmark_model` output

# Expected numbers, read off each real sample by hand (us / MB / counts).
EXPECTED = {
    "tf_issue_42507_android_cpu.txt": dict(
        init_us=855, first_inference_us=49060, warmup_avg_us=34825.1, inference_avg_us=33209.4,
        inference_std_us=450, inference_min_us=32641, count=50, warmup_count=15,
        init_memory_mb=0.0, overall_memory_mb=12.8672, format="summary",
    ),
    "synaptics_vs680_nnapi_adb.txt": dict(
        init_us=66002, first_inference_us=637079, warmup_avg_us=637079, inference_avg_us=1885.74,
        inference_std_us=870, inference_max_us=9925, count=520, warmup_count=1, init_memory_mb=7.40234,
        overall_memory_mb=7.83203, model_size_mb=0.497264, runtime_version="2.15.0",
    ),
    "synaptics_nnapi_cache_excerpt_sci.txt": dict(
        init_us=34075, first_inference_us=1599062, warmup_avg_us=1.59906e6, inference_avg_us=1380.86,
        inference_std_us=None, count=None, init_memory_mb=None,
    ),
    "ti_am62x_cpu_sci.txt": dict(
        init_us=6418, first_inference_us=1041765, warmup_avg_us=1.04176e6, inference_avg_us=971535,
        inference_std_us=39112, inference_min_us=911877, count=50, warmup_count=1,
        init_memory_mb=6.14844, overall_memory_mb=109.848, model_size_mb=67.3128,
    ),
    "arm_gcp_xnnpack_percentiles.txt": dict(
        init_us=6395, first_inference_us=2761, warmup_avg_us=3243.58, inference_avg_us=2942.27,
        inference_std_us=1190, inference_median_us=2781, count=337, warmup_count=153,
        init_memory_mb=39.4531, overall_memory_mb=40.8281,
    ),
    "oppo_a3x_logcat_sci.txt": dict(
        init_us=458883, first_inference_us=2732148, warmup_avg_us=2.73215e6, inference_avg_us=2.71985e6,
        inference_std_us=105101, inference_min_us=2640862, inference_median_us=2709263, count=10,
        warmup_count=1, init_memory_mb=286.73, overall_memory_mb=337.0,
    ),
    "yuenshome_issue77_legacy.txt": dict(
        init_us=9933, first_inference_us=None, warmup_avg_us=76605.9, inference_avg_us=66767.6,
        inference_std_us=39, count=15, warmup_count=7, format="legacy",
    ),
    "constructed_from_source_peak_memory.txt": dict(
        init_us=25311, warmup_avg_us=1.20447e6, inference_avg_us=1.19026e6, inference_std_us=2572,
        count=3, warmup_count=1, init_memory_mb=3.58203, overall_memory_mb=21.4375, peak_memory_mb=24.6016,
    ),
}

FAKE_ADB = r'''#!{python}
"""A fake adb: answers from the JSON config named by $FAKE_ADB_CONFIG; logs every call."""
import json, os, sys, time

cfg = json.load(open(os.environ["FAKE_ADB_CONFIG"]))
argv = sys.argv[1:]
with open(cfg["log"], "a") as f:
    f.write(json.dumps(argv) + "\n")
devices = cfg["devices"]


def calls(serial, bump):
    path = os.path.join(cfg["dir"], "count-" + serial.replace(":", "_"))
    n = int(open(path).read()) if os.path.exists(path) else 0
    if bump:
        n += 1
        with open(path, "w") as f:
            f.write(str(n))
    return n


def gone(serial, bump=False):
    d = devices.get(serial)
    if d is None:
        return True
    n = calls(serial, bump)
    return d.get("fail_after") is not None and n > d["fail_after"]


def fail(msg, rc=1):
    sys.stderr.write(msg + "\n")
    sys.exit(rc)


serial = None
if argv[:1] == ["-s"]:
    serial, argv = argv[1], argv[2:]
cmd = argv[0] if argv else ""
if cmd == "devices":
    print("List of devices attached")
    for s, d in devices.items():
        if gone(s):
            continue
        model = d.get("props", {}).get("ro.product.model", "x").replace(" ", "_")
        state = d.get("state", "device")
        print(f"{s}\t{state} usb:1-1 product:p model:{model} device:d transport_id:1" if "-l" in argv
              else f"{s}\t{state}")
    print()
    sys.exit(0)
if serial is None:
    visible = [s for s in devices if not gone(s)]
    if not visible:
        fail("adb: no devices/emulators found")
    if len(visible) > 1:
        fail("adb: more than one device/emulator")
    serial = visible[0]
if gone(serial, bump=True):
    fail(f"adb: device '{serial}' not found")
d = devices[serial]
state = d.get("state", "device")
if state == "unauthorized":
    fail("adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
         "Try 'adb kill-server' if that seems wrong.\n"
         "Otherwise check for a confirmation dialog on your device.")
if state == "offline":
    fail("adb: device offline")
if cmd == "push":
    local = argv[1]
    if not os.path.exists(local):
        fail(f"adb: error: cannot stat '{local}': No such file or directory")
    print(f"{local}: 1 file pushed, 0 skipped. 12.3 MB/s ({os.path.getsize(local)} bytes in 0.001s)")
    sys.exit(0)
if cmd == "shell":
    c = " ".join(argv[1:])
    if c.startswith("getprop"):
        for k, v in d.get("props", {}).items():
            print(f"[{k}]: [{v}]")
    elif "cpu/possible" in c:
        print(d.get("cpu_possible", "0-7"))
    elif "thermal_zone" in c:
        print("\n".join(str(t) for t in d.get("temps", [38500, 41200, -274000])))
        print("__thermal_status__")
        print("Thermal Status: 0")
    elif "scaling_governor" in c:
        print(d.get("governor", "schedutil"))
    elif "--graph=" in c:
        time.sleep(d.get("bench_sleep", 0))
        if d.get("bench_unplugged"):  # the cable is pulled while it runs: no output, then gone
            with open(os.path.join(cfg["dir"], "count-" + serial.replace(":", "_")), "w") as f:
                f.write("1000000")
            sys.exit(255)
        text = open(d["bench_output"]).read()
        (sys.stderr if d.get("bench_stream") == "stderr" else sys.stdout).write(text)
        sys.exit(d.get("bench_rc", 0))
    sys.exit(0)
fail(f"adb: unknown command {cmd}")
'''

PIXEL = {
    "ro.product.model": "Pixel 7",
    "ro.product.manufacturer": "Google",
    "ro.board.platform": "gs201",
    "ro.hardware": "panther",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
}


def elf(machine: int) -> bytes:
    """A minimal little-endian ELF64 header for ``machine`` (183 = AArch64, 62 = x86-64)."""
    return b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack("<HH", 2, machine) + bytes(44)


class Phones:
    """The fake adb's world: phones, their answers, and the log of calls."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.log = root / "adb-calls.jsonl"
        self.config = root / "adb.json"
        self.devices: dict[str, dict] = {}
        adb = self.bin / "adb"
        adb.write_text(FAKE_ADB.replace("{python}", sys.executable))
        adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
        self.save()

    def add(self, serial: str, **spec) -> Phones:
        spec.setdefault("props", dict(PIXEL))
        spec.setdefault("bench_output", str(SAMPLE))
        self.devices[serial] = spec
        return self.save()

    def save(self) -> Phones:
        cfg = {"log": str(self.log), "dir": str(self.root), "devices": self.devices}
        self.config.write_text(json.dumps(cfg))
        return self

    def calls(self, serial: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if serial is None or r[:2] == ["-s", serial]]

    def shell_commands(self, serial: str) -> list[str]:
        return [" ".join(r[3:]) for r in self.calls(serial) if r[2:3] == ["shell"]]


@pytest.fixture
def phones(tmp_path, monkeypatch):
    world = Phones(tmp_path / "adbworld")
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(world.config))
    monkeypatch.setenv("PATH", f"{world.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return world


@pytest.fixture
def model(tmp_path) -> Path:
    p = tmp_path / "knee_float32.tflite"
    p.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(120))  # the flatbuffer identifier is all nasctl checks
    return p


@pytest.fixture
def arm64_binary(tmp_path) -> Path:
    p = tmp_path / "android_aarch64_benchmark_model"
    p.write_bytes(elf(183))
    return p


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nasctl: error:"), err
    return lines[0]


# --- the parser, on every real sample ---------------------------------------------------------
def test_every_sample_has_expectations_and_a_source():
    samples = sorted(p.name for p in DATA.glob("*.txt"))
    assert samples == sorted(EXPECTED)
    readme = (DATA / "README.md").read_text()
    for name in samples:
        assert name in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parser_reads_real_sample(name):
    parsed = parse_benchmark_output((DATA / name).read_text())
    assert set(parsed) == set(KEYS)
    for key, want in EXPECTED[name].items():
        if want is None or isinstance(want, str):
            assert parsed[key] == want, key
        else:
            assert parsed[key] == pytest.approx(want, rel=1e-9), key
    if isinstance(parsed["count"], int):
        assert isinstance(parsed["warmup_count"], int)


def test_parser_takes_the_streams_in_either_order_and_crlf():
    text = SAMPLE.read_text()
    lines = text.splitlines()
    stats = [ln for ln in lines if "count=" in ln]
    others = [ln for ln in lines if "count=" not in ln]
    # the statistics arrived on the other stream, which the caller appended after the summary
    swapped = "\r\n".join(others) + "\r\n" + "\r\n".join(stats)
    a, b = parse_benchmark_output(text), parse_benchmark_output(swapped)
    assert a == b


def test_parser_reads_the_last_of_several_runs():
    first = (DATA / "ti_am62x_cpu_sci.txt").read_text()
    second = SAMPLE.read_text()
    parsed = parse_benchmark_output(first + "\n" + second)
    assert parsed["inference_avg_us"] == pytest.approx(1885.74)
    assert parsed["count"] == 520 and parsed["warmup_count"] == 1
    assert parsed["overall_memory_mb"] == pytest.approx(7.83203)


def test_parser_all_same_statistics_line():
    # Stat::OutputToStream prints "count=N curr=X(all same)" when every run took as long (source format)
    text = "count=1 curr=5000\ncount=10 curr=4000(all same)\n" + (
        "Inference timings in us: Init: 10, First inference: 5000, Warmup (avg): 5000, Inference (avg): 4000"
    )
    parsed = parse_benchmark_output(text)
    assert parsed["count"] == 10 and parsed["inference_std_us"] == 0.0
    assert parsed["inference_min_us"] == parsed["inference_max_us"] == 4000


def test_parser_error_quotes_the_last_lines():
    text = (
        "INFO: STARTING!\nINFO: Graph: [/data/local/tmp/nasctl/x/model_0.tflite]\n"
        "ERROR: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'\n"
        "ERROR: Failed to initialize the interpreter\n"
    )
    with pytest.raises(BenchmarkOutputError) as e:
        parse_benchmark_output(text)
    msg = str(e.value)
    assert "\n" not in msg and "Inference timings" in msg
    assert "Failed to initialize the interpreter" in msg and "FULLY_CONNECTED" in msg
    with pytest.raises(BenchmarkOutputError, match="no output at all"):
        parse_benchmark_output("")
    nan = "Inference timings in us: Init: 1, First inference: 2, Warmup (avg): 2, Inference (avg): nan"
    with pytest.raises(BenchmarkOutputError, match="timed no inference run"):
        parse_benchmark_output(nan)


# --- pure helpers -----------------------------------------------------------------------------
def test_parse_devices_listing():
    text = (
        "* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
        "List of devices attached\n"
        "emulator-5554          device product:sdk_gphone64 model:sdk_gphone64_arm64 device:emu64a "
        "transport_id:1\n"
        "192.168.1.20:5555      offline transport_id:3\n"
        "R58M12ABCDE            unauthorized usb:1-1 transport_id:2\n"
        "0123456789ABCDEF       no permissions (user in plugdev group; are your udev rules wrong?); "
        "see [http://developer.android.com/tools/device.html] usb:1-2 transport_id:4\n\n"
    )
    got = parse_devices(text)
    assert [(d.serial, d.state) for d in got] == [
        ("emulator-5554", "device"),
        ("192.168.1.20:5555", "offline"),
        ("R58M12ABCDE", "unauthorized"),
        ("0123456789ABCDEF", "no permissions (user in plugdev group; are your udev rules wrong?); see "
         "[http://developer.android.com/tools/device.html]"),
    ]
    assert got[0].attrs["model"] == "sdk_gphone64_arm64" and got[0].attrs["transport_id"] == "1"
    assert parse_devices("List of devices attached\n\n") == []


def test_getprop_and_cpu_list():
    props = parse_getprop("[ro.product.model]: [Pixel 7]\r\n[ro.empty]: []\nnoise\n")
    assert props == {"ro.product.model": "Pixel 7", "ro.empty": ""}
    assert count_cpus("0-7\n") == 8 and count_cpus("0-3,6,8-9") == 7 and count_cpus("") == 0


def test_elf_abi_and_binary_errors(tmp_path, monkeypatch, arm64_binary):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert elf_abis(arm64_binary) == ("arm64-v8a",)
    x86 = tmp_path / "x86_64_benchmark_model"
    x86.write_bytes(elf(62))
    apk = tmp_path / "android_aarch64_benchmark_model.apk"
    apk.write_bytes(b"PK\x03\x04" + bytes(60))
    phone = ["arm64-v8a", "armeabi-v7a", "armeabi"]
    assert find_binary(phone, arm64_binary) == arm64_binary
    with pytest.raises(ProfilingError, match="for x86_64, but the phone runs arm64-v8a.*android_aarch64"):
        find_binary(phone, x86)
    with pytest.raises(ProfilingError, match="not a native executable.*apk"):
        find_binary(phone, apk)
    with pytest.raises(ProfilingError, match="no benchmark_model binary.*android_aarch64_benchmark_model"):
        find_binary(phone)
    cached = tmp_path / "cache" / "nasctl" / "benchmark_model" / "armeabi-v7a" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(elf(40))  # a 32-bit ARM binary runs on a 64-bit phone that lists armeabi-v7a
    assert find_binary(phone) == cached
    not_tflite = tmp_path / "model.onnx.tflite"
    not_tflite.write_bytes(b"\x08\x07\x12\x04onnx" + bytes(20))
    with pytest.raises(ProfilingError, match="not a TFLite model"):
        check_tflite(not_tflite)


def test_benchmark_command_and_options():
    o = BenchOptions(threads=4, runs=50, warmup=5, min_seconds=0, use_xnnpack=False, taskset="f0")
    remote = "/data/local/tmp/nasctl/r"
    cmd = benchmark_command(f"{remote}/benchmark_model", f"{remote}/m.tflite", o)
    assert cmd == (
        "taskset f0 /data/local/tmp/nasctl/r/benchmark_model --graph=/data/local/tmp/nasctl/r/m.tflite "
        "--num_threads=4 --num_runs=50 --warmup_runs=5 --min_secs=0 --use_xnnpack=false"
    )
    assert o.affinity == (4, 5, 6, 7)
    for bad, match in (({"repeats": 0}, "--repeats"), ({"taskset": "big"}, "--taskset"),
                       ({"threads": 0}, "--threads"), ({"cooldown_s": -1}, "--cooldown")):
        with pytest.raises(ProfilingError, match=match):
            BenchOptions(**bad)


def test_summary_over_repeats(model):
    def parsed(avg, std, count=100):
        return {**dict.fromkeys(KEYS), "inference_avg_us": avg, "inference_std_us": std,
                "inference_min_us": avg - 2 * std, "count": count, "init_us": 1000.0}

    runs = [{"parsed": parsed(a, 100.0), "raw": f"run {a}", "thermal_before": {"max_c": 40.0},
             "exit_code": 0, "seconds": 1.0} for a in (1000.0, 1100.0, 1300.0)]
    info = DeviceInfo("S1", "Pixel 7", "gs201", "arm64-v8a", "Android 14", 8)
    r = summarize_runs(runs, str(model), info, {"abilist": "arm64-v8a"}, "benchmark_model sha256:x", "d",
                       "b", "schedutil", {"max_c": 45.0}, "cmd", BenchOptions(repeats=3))
    assert r.p50_ms == pytest.approx(1.1)
    assert r.p90_ms == pytest.approx(1.26)  # numpy's linear interpolation over the three averages
    assert r.mean_ms == pytest.approx(3400 / 3 / 1000)
    pooled = ((100.0**2 * 3 + sum((a - 3400 / 3) ** 2 for a in (1000, 1100, 1300))) / 3) ** 0.5 / 1000
    assert r.std_ms == pytest.approx(pooled)
    assert r.min_ms == pytest.approx(0.8) and r.n_runs == 300
    assert r.drift == pytest.approx(0.3) and "drift_warning" in r.extra
    assert r.extra["raw_output"] == ["run 1000.0", "run 1100.0", "run 1300.0"]
    assert r.backend == "adb" and r.device_fingerprint == info.fingerprint


def test_adb_backend_is_registered():
    from nasctl.profiling.backends import backend_for, get_backend

    assert get_backend("adb") is ADB_BACKEND
    assert backend_for("m.tflite", "adb") is ADB_BACKEND
    assert backend_for("m.tflite").name == "litert"  # the default for .tflite stays the host


# --- device listing and fingerprints (fake adb) ------------------------------------------------
def test_device_info_and_fingerprint(phones):
    phones.add("S1", cpu_possible="0-7").add("S2", cpu_possible="0-7")
    phones.add("S3", props={**PIXEL, "ro.build.version.release": "15"})
    adb = Adb()
    i1, props = device_info(adb, "S1")
    assert (i1.name, i1.model, i1.board, i1.abi, i1.os, i1.cores) == (
        "S1", "Pixel 7", "gs201", "arm64-v8a", "Android 14 (SDK 34)", 8)
    assert props["abilist"].startswith("arm64-v8a")
    assert device_info(adb, "S2")[0].fingerprint == i1.fingerprint  # same phone model and OS: same tables
    assert device_info(adb, "S3")[0].fingerprint != i1.fingerprint  # an OS update is a new scope


def test_devices_command_lists_states_and_fingerprints(phones, capsys):
    phones.add("R58M12ABCDE").add("192.168.1.20:5555", state="unauthorized")
    rc, out, err = cli(["devices"], capsys)
    assert rc == 0
    fp = device_info(Adb(), "R58M12ABCDE")[0].fingerprint
    assert "R58M12ABCDE" in out and "Pixel 7" in out and "gs201" in out and fp in out
    assert "192.168.1.20:5555  unauthorized" in out and "Allow USB debugging" in err
    rc, out, _ = cli(["devices", "--json"], capsys)
    listed = json.loads(out)
    assert [d["state"] for d in listed] == ["device", "unauthorized"]
    assert listed[0]["fingerprint"] == fp and listed[0]["info"]["cores"] == 8 and listed[1]["info"] is None
    phones.devices.clear()
    phones.save()
    rc, out, err = cli(["devices"], capsys)
    assert rc == 0 and out == "" and "no Android phones attached" in err


def test_choose_devices(phones):
    adb = Adb()
    with pytest.raises(AdbError, match="no Android phone is connected"):
        choose_devices(adb)
    phones.add("A").add("B", state="offline")
    with pytest.raises(AdbError, match=r"several phones are connected \(A \(device\), B \(offline\)\)"):
        choose_devices(adb)
    assert choose_devices(adb, ["A"]) == ["A"]
    assert choose_devices(adb, all_devices=True) == ["A", "B"]
    assert choose_devices(adb, ["B", "A"]) == ["B", "A"]  # B fails in its worker, A goes on
    assert list_devices(adb)[1].error and "offline" in list_devices(adb)[1].error


# --- every adb error path through the real CLI: exit 2, one line --------------------------------
@pytest.mark.parametrize(
    "setup, extra_args, expected",
    [
        ("none", [], ["no Android phone is connected", "adb connect"]),
        ("two", [], ["several phones are connected", "A (device)", "B (device)", "--device SERIAL", "--all"]),
        ("unauthorized", [], ["'A' is unauthorized", "Allow USB debugging"]),
        ("offline", [], ["'A' is offline", "adb reconnect"]),
        ("one", ["--device", "XYZ"], ["device 'XYZ' not found", "A (device)"]),
        ("vanishes", [], ["device 'A' not found", "connected: none"]),
        ("unplugged_during_run", [], ["device 'A' not found", "disconnected"]),
        ("hangs", ["--timeout", "1"], ["did not answer within 1 s", "phone 'A'"]),
        ("bench_fails", [], ["exit 1", "Failed to mmap model", "Inference timings"]),
    ],
)
def test_adb_errors_exit_2_with_one_line(phones, model, arm64_binary, capsys, tmp_path, setup, extra_args,
                                         expected):
    failing_output = tmp_path / "failed.txt"
    failing_output.write_text(
        "INFO: STARTING!\nERROR: Failed to mmap model /data/local/tmp/nasctl/x/model_0.tflite\n"
    )
    if setup == "two":
        phones.add("A").add("B")
    elif setup in ("unauthorized", "offline"):
        phones.add("A", state=setup)
    elif setup == "one":
        phones.add("A")
    elif setup == "vanishes":
        phones.add("A", fail_after=8)  # listed, answers getprop, takes the binary, then is unplugged
    elif setup == "unplugged_during_run":
        phones.add("A", fail_after=100, bench_unplugged=True)
    elif setup == "hangs":
        phones.add("A", bench_sleep=5)
    elif setup == "bench_fails":
        phones.add("A", bench_output=str(failing_output), bench_rc=1, bench_stream="stderr")
    store = tmp_path / "m.sqlite"
    rc, out, err = cli(["bench", str(model), "--benchmark-binary", str(arm64_binary), "--cooldown", "0",
                        "--repeats", "1", "--store", str(store), *extra_args], capsys)
    assert rc == 2
    line = one_error_line(err)
    for text in expected:
        assert text in line, line
    if setup in ("vanishes", "unplugged_during_run", "hangs", "bench_fails"):  # reached the phone: cleaned up
        rm = [c for c in phones.shell_commands("A") if c.startswith("rm -rf /data/local/tmp/nasctl/")]
        assert len(rm) == 1
        mkdir = [c for c in phones.shell_commands("A") if c.startswith("mkdir -p")]
        assert rm[0].split()[-1] == mkdir[0].split()[-1]
    if store.exists():
        with MeasurementStore(store) as s:
            assert s.count() == 0


def test_adb_missing_or_wrong_path(phones, model, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rc, _, err = cli(["devices"], capsys)
    assert rc == 2 and "adb is not installed" in one_error_line(err) and "apt install adb" in err
    rc, _, err = cli(["bench", str(model), "--adb", str(tmp_path / "nope" / "adb")], capsys)
    assert rc == 2 and "adb not found at" in one_error_line(err) and "platform-tools" in err
    rc, _, err = cli(["devices", "--adb", str(phones.bin / "adb")], capsys)
    assert rc == 0


def test_bad_binary_or_model_exit_2(phones, model, tmp_path, capsys):
    phones.add("A")
    x86 = tmp_path / "bm"
    x86.write_bytes(elf(62))
    base = ["bench", str(model), "--store", str(tmp_path / "s.sqlite"), "--cooldown", "0"]
    rc, _, err = cli([*base, "--benchmark-binary", str(x86)], capsys)
    line = one_error_line(err)
    assert rc == 2 and "for x86_64, but the phone runs arm64-v8a" in line and "android_aarch64" in line
    rc, _, err = cli(base, capsys)  # nothing in the cache
    line = one_error_line(err)
    assert rc == 2 and "no benchmark_model binary" in line and "nasctl/benchmark_model/arm64-v8a" in line
    onnx = tmp_path / "model.tflite"
    onnx.write_bytes(b"not a flatbuffer at all")
    rc, _, err = cli(["bench", str(onnx)], capsys)
    assert rc == 2 and "not a TFLite model" in one_error_line(err)
    # the ABI is the phone's (getprop), but nothing was pushed or created before the checks passed
    assert not [c for c in phones.calls("A") if c[2] == "push" or "mkdir" in " ".join(c)]
    rc, _, err = cli(["bench", str(model), "--repeats", "0"], capsys)
    assert rc == 2 and "--repeats must be at least 1" in one_error_line(err)
    rc, _, err = cli(["bench", str(model), "--device", "A", "--all"], capsys)
    assert rc == 2 and "not both" in one_error_line(err)


# --- whole runs ---------------------------------------------------------------------------------
def test_bench_end_to_end_stores_the_real_sample(phones, model, arm64_binary, tmp_path, capsys):
    phones.add("R58M12ABCDE", bench_stream="stderr")
    cached = tmp_path / "cache" / "nasctl" / "benchmark_model" / "arm64-v8a" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(arm64_binary.read_bytes())  # found in the documented cache location
    store, out_dir = tmp_path / "m.sqlite", tmp_path / "raw"
    rc, out, err = cli(["bench", str(model), "--threads", "2", "--runs", "20", "--warmup", "3",
                        "--repeats", "2", "--cooldown", "0", "--no-xnnpack", "--taskset", "f0",
                        "--store", str(store), "--out", str(out_dir)], capsys)
    assert rc == 0, err
    assert "R58M12ABCDE knee_float32.tflite: p50 1.886 ms" in out and "schedutil" in out
    assert "thermal 41.2 -> 41.2 C" in out and "memory init 7.4 MB overall 7.83 MB" in out
    calls, shell = phones.calls("R58M12ABCDE"), phones.shell_commands("R58M12ABCDE")  # before we add any

    info = device_info(Adb(), "R58M12ABCDE")[0]
    runtime = f"benchmark_model sha256:{sha256_file(cached)[:12]}"
    with MeasurementStore(store) as s:
        rows = s.latest(Scope(info.fingerprint, "adb", runtime, "float32", 2), "model")
    r = rows[sha256_file(model)]
    assert r.p50_ms == r.p90_ms == r.mean_ms == pytest.approx(1.88574)
    assert r.std_ms == pytest.approx(0.870) and r.min_ms == pytest.approx(1.171)
    assert r.n_runs == 1040 and r.threads == 2 and r.device == "R58M12ABCDE" and r.affinity == (4, 5, 6, 7)
    assert r.peak_memory_bytes == round(7.83203 * 2**20)
    assert r.extra["raw_output"] == [SAMPLE.read_text()] * 2
    assert r.extra["governor"] == "schedutil" and r.extra["thermal"]["before"]["max_c"] == 41.2
    assert r.extra["binary"]["reported_version"] == "2.15.0" and r.extra["xnnpack"] is False
    assert sorted(p.name for p in (out_dir / "R58M12ABCDE").iterdir()) == [
        "00-knee_float32.json", "00-knee_float32.run1.txt", "00-knee_float32.run2.txt"]

    pushes = [c[3:] for c in calls if c[2] == "push"]
    run_dir = pushes[0][1].rsplit("/", 1)[0]
    assert run_dir.startswith("/data/local/tmp/nasctl/")
    assert pushes == [[str(cached), f"{run_dir}/benchmark_model"], [str(model), f"{run_dir}/model_0.tflite"]]
    bench = [c for c in shell if "--graph=" in c]
    assert bench == [f"taskset f0 {run_dir}/benchmark_model --graph={run_dir}/model_0.tflite --num_threads=2 "
                     "--num_runs=20 --warmup_runs=3 --min_secs=0.5 --use_xnnpack=false"] * 2
    assert f"chmod 755 {run_dir}/benchmark_model" in shell
    assert shell[-1] == f"rm -rf {run_dir}"


def test_two_phones_one_vanishes_the_other_is_stored(phones, model, arm64_binary, tmp_path, capsys):
    phones.add("A").add("B", fail_after=8, props={**PIXEL, "ro.product.model": "Pixel 6"})
    store = tmp_path / "m.sqlite"
    rc, out, err = cli(["bench", str(model), "--all", "--benchmark-binary", str(arm64_binary),
                        "--repeats", "1", "--cooldown", "0", "--store", str(store), "--json"], capsys)
    assert rc == 1
    report = json.loads(out)
    assert [r["device"] for r in report["results"]] == ["A"] and list(report["failures"]) == ["B"]
    errors = [ln for ln in err.splitlines() if ln.startswith("nasctl: error:")]
    assert len(errors) == 1 and errors[0].startswith("nasctl: error: device 'B' not found")
    assert "1 of 2 phones finished" in err
    with MeasurementStore(store) as s:
        assert s.count() == 1
        (scope, device, n), = s.scopes("model")
        assert (device, n, scope[1]) == ("A", 1, "adb")
    for serial in ("A", "B"):  # both cleaned up (B's rm was attempted although it was gone)
        assert any(c.startswith("rm -rf /data/local/tmp/nasctl/") for c in phones.shell_commands(serial))


def test_two_phones_both_finish_in_parallel(phones, model, arm64_binary, tmp_path, capsys):
    phones.add("A", bench_sleep=0.3).add("B", bench_sleep=0.3)
    rc, out, err = cli(["bench", str(model), "--device", "A", "--device", "B", "--benchmark-binary",
                        str(arm64_binary), "--repeats", "1", "--cooldown", "0", "--store",
                        str(tmp_path / "m.sqlite")], capsys)
    assert rc == 0, err
    assert out.count("knee_float32.tflite: p50") == 2


def test_measure_through_the_profiling_backend(phones, model, arm64_binary, tmp_path):
    from nasctl.profiling.backends import ProfileSettings, measure

    phones.add("A")
    cached = tmp_path / "cache" / "nasctl" / "benchmark_model" / "arm64-v8a" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(arm64_binary.read_bytes())
    (r,) = measure([model], "adb", ProfileSettings(threads=1, runs=10, warmup=1))
    assert r.backend == "adb" and r.device == "A" and r.p50_ms == pytest.approx(1.88574)
    assert len(r.extra["raw_output"]) == 1


# --- a real phone, when one is attached and named ------------------------------------------------
@pytest.mark.skipif(not os.environ.get("NASCTL_TEST_PHONE"), reason="set NASCTL_TEST_PHONE=SERIAL (real adb)")
def test_real_phone(tmp_path, capsys):
    """By hand: NASCTL_TEST_PHONE=SERIAL [NASCTL_TEST_MODEL=model.tflite] with adb and benchmark_model
    (docs/android.md) set up; the test fake is not used."""
    serial = os.environ["NASCTL_TEST_PHONE"]
    rc, out, _ = cli(["devices", "--json"], capsys)
    (phone,) = [d for d in json.loads(out) if d["serial"] == serial]
    assert rc == 0 and phone["state"] == "device" and phone["fingerprint"]
    if os.environ.get("NASCTL_TEST_MODEL"):
        rc, out, err = cli(["bench", os.environ["NASCTL_TEST_MODEL"], "--device", serial, "--repeats", "2",
                            "--cooldown", "1", "--store", str(tmp_path / "m.sqlite"), "--json"], capsys)
        assert rc == 0, err
        (r,) = json.loads(out)["results"]
        assert r["p50_ms"] > 0 and len(r["extra"]["raw_output"]) == 2
