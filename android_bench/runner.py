"""Run TFLite's ``benchmark_model`` on phones: push, run, parse, clean up; one worker per phone.

On each phone, a run folder ``/data/local/tmp/nasctl/<run id>/`` receives the binary (``chmod 755``)
and the models; it is removed with ``rm -rf`` in ``finally``, whatever happened. Per model:
``repeats`` runs of ``benchmark_model --graph --num_threads --num_runs --warmup_runs --min_secs
--use_xnnpack`` (optionally under ``taskset MASK``), a cool-down sleep before every run but the
first, the thermal state read before each run and the CPU governor once. The result's ``p50_ms`` /
``p90_ms`` are the median / 90th percentile of the runs' averages, ``mean_ms`` the mean over all
timed inferences, ``std_ms`` their pooled standard deviation, ``drift`` the change from the first to
the last run's average (a phone heating up shows here). Each run's raw output is kept in
``extra["raw_output"]`` (and written to files with ``out_dir``).

Several phones run in parallel (:func:`bench_devices`): results reach ``on_result`` in the calling
thread as soon as each model is done, so the store gets them even when another phone fails later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import shlex
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.core import sha256_file
from nasctl.profiling.backends import ProfileSettings, check_threads
from nasctl.profiling.device import DeviceInfo
from nasctl.profiling.errors import ProfilingError
from nasctl.profiling.result import DRIFT_WARN, LatencyResult, summarize
from nasctl.profiling.store import finite_or_none

from .adb import Adb, AdbError, AdbTimeout, classify, state_error
from .binary import check_tflite, find_binary
from .device import READY, device_info
from .parse import BenchmarkOutputError, parse_benchmark_output

log = logging.getLogger(__name__)

BACKEND = "adb"
REMOTE_ROOT = "/data/local/tmp/nasctl"
CLEANUP_TIMEOUT_S = 20.0
THERMAL_CMD = (
    "cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null; echo __thermal_status__; "
    "dumpsys thermalservice 2>/dev/null | grep -i 'thermal status'"
)
GOVERNOR_CMD = "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null"


@dataclass(frozen=True)
class BenchOptions:
    """How to benchmark on a phone. Defaults match ``nasctl profile`` where they overlap."""

    threads: int = 1  # --num_threads
    runs: int = 100  # --num_runs: timed inferences per run, at least
    warmup: int = 10  # --warmup_runs
    min_seconds: float = 0.5  # --min_secs: keep timing until this long has passed
    repeats: int = 3  # benchmark_model runs per model: median and p90 are taken over them
    cooldown_s: float = 5.0  # sleep before each run but the first: the SoC cools, clocks settle
    use_xnnpack: bool = True  # the CPU delegate apps use; false = TFLite's built-in kernels
    taskset: str | None = None  # hex CPU mask for `taskset` (e.g. f0: the big cores of many phones)
    timeout_s: float = 600.0  # one benchmark_model run
    timeout_flag: str | None = "--timeout"  # the caller's flag that sets timeout_s (None: it has none)
    binary: str | None = None  # --benchmark-binary; default: the cache (see binary.py)
    out_dir: str | None = None  # raw outputs and results as files, per phone

    def __post_init__(self):
        ProfileSettings(
            threads=self.threads, runs=self.runs, warmup=self.warmup, min_seconds=self.min_seconds
        )
        if int(self.repeats) < 1:
            raise ProfilingError(f"--repeats must be at least 1, got {self.repeats}")
        if self.cooldown_s < 0:
            raise ProfilingError(f"--cooldown must be >= 0 seconds, got {self.cooldown_s}")
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ProfilingError(f"--timeout must be a number of seconds > 0, got {self.timeout_s}")
        if self.taskset is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", self.taskset):
            raise ProfilingError(f"--taskset takes a hex CPU mask such as f0, got {self.taskset!r}")

    @property
    def affinity(self) -> tuple[int, ...]:
        """The CPUs of the taskset mask (empty: not pinned)."""
        if not self.taskset:
            return ()
        mask = int(self.taskset, 16)
        return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_profiling(
        cls,
        settings: ProfileSettings,
        binary: str | None = None,
        timeout_s: float | None = None,
        timeout_flag: str | None = None,
    ) -> BenchOptions:
        """What a lookup table or a calibration run asks of a phone: one run per model, no cool-down
        (the profiler's reference re-timing and the store's batches do the rest). ``timeout_flag``:
        the flag of the calling command that set ``timeout_s``, named when a run times out (None: the
        command has none, e.g. search, and the default limit applies)."""
        return cls(
            threads=settings.threads,
            runs=settings.runs,
            warmup=settings.warmup,
            min_seconds=settings.min_seconds,
            repeats=1,
            cooldown_s=0.0,
            timeout_s=cls.timeout_s if timeout_s is None else timeout_s,
            timeout_flag=timeout_flag,
            binary=binary,
        )


def phone_runtime(
    adb: Adb, serial: str, explicit_binary: str | None = None
) -> tuple[DeviceInfo, dict, Path, str]:
    """(device info, its extra properties, the benchmark_model binary for its ABI, the runtime version
    that keys the store: ``benchmark_model sha256:<12 hex>``)."""
    info, props = device_info(adb, serial)
    abilist = [a for a in props["abilist"].split(",") if a]
    abilist = [info.abi] + [a for a in abilist if a != info.abi]
    binary = find_binary(abilist, explicit_binary)
    return info, props, binary, f"benchmark_model sha256:{sha256_file(binary)[:12]}"


@dataclass
class BenchReport:
    """What :func:`bench_devices` did: every result, and one line per phone that failed."""

    results: list[LatencyResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # serial -> error line


class Cancelled(ProfilingError):
    """The run was stopped (Ctrl-C on another thread)."""


def benchmark_command(binary: str, model: str, options: BenchOptions) -> str:
    """The shell command that runs one benchmark on the phone."""
    parts = ["taskset", options.taskset] if options.taskset else []
    parts += [
        binary,
        f"--graph={model}",
        f"--num_threads={options.threads}",
        f"--num_runs={options.runs}",
        f"--warmup_runs={options.warmup}",
        f"--min_secs={options.min_seconds:g}",
        f"--use_xnnpack={'true' if options.use_xnnpack else 'false'}",
    ]
    return " ".join(shlex.quote(p) for p in parts)


def read_thermal(adb: Adb, serial: str) -> dict[str, Any]:
    """Hottest thermal zone in °C and Android's thermal status (0 none .. 6 shutdown), where readable."""
    out = adb.shell(serial, THERMAL_CMD, check=False).stdout.replace("\r", "")
    zones, _, status_text = out.partition("__thermal_status__")
    temps = []
    for tok in zones.split():
        if re.fullmatch(r"-?\d+", tok):
            v = int(tok)
            c = v / 1000.0 if abs(v) >= 1000 else float(v)  # most zones report millidegrees
            if -30.0 < c < 150.0:
                temps.append(c)
    m = re.search(r"thermal status:\s*(\d+)", status_text, re.IGNORECASE)
    return {
        "max_c": max(temps) if temps else None,
        "zones": len(temps),
        "status": int(m.group(1)) if m else None,
    }


def read_governor(adb: Adb, serial: str) -> str | None:
    out = adb.shell(serial, GOVERNOR_CMD, check=False).stdout.strip()
    return out.splitlines()[0].strip() if out else None


def bench_device(
    adb: Adb,
    serial: str,
    models: Sequence[str],
    options: BenchOptions,
    on_result: Callable[[LatencyResult], None] | None = None,
    stop: threading.Event | None = None,
) -> list[LatencyResult]:
    """Benchmark ``models`` on one phone, one :class:`LatencyResult` per model, in order; each is
    handed to ``on_result`` as soon as it exists. Remote files are removed in ``finally``."""
    paths = [str(check_tflite(m)) for m in models]
    info, props, binary, runtime = phone_runtime(adb, serial, options.binary)
    check_threads(options.threads, info)  # at most the phone's cores: before anything is pushed
    digest = sha256_file(binary)
    run_dir = f"{REMOTE_ROOT}/{uuid.uuid4().hex[:12]}"
    remote_bin = f"{run_dir}/benchmark_model"
    results: list[LatencyResult] = []
    log.info(
        "%s: %s, %s, %s, %d cores (fingerprint %s)",
        serial,
        info.model,
        info.board,
        info.os,
        info.cores,
        info.fingerprint,
    )
    try:
        adb.shell(serial, f"mkdir -p {run_dir}")
        adb.push(serial, binary, remote_bin, timeout_s=max(adb.timeout_s, 300.0))
        adb.shell(serial, f"chmod 755 {remote_bin}")
        governor = read_governor(adb, serial)
        for i, path in enumerate(paths):
            remote_model = f"{run_dir}/model_{i}.tflite"
            adb.push(serial, path, remote_model, timeout_s=max(adb.timeout_s, 300.0))
            command = benchmark_command(remote_bin, remote_model, options)
            runs: list[dict[str, Any]] = []
            for r in range(options.repeats):
                if runs or results:
                    _sleep(options.cooldown_s, stop)
                _check(stop)
                runs.append(_one_run(adb, serial, path, command, options, r))
                log.info(
                    "%s: %s run %d/%d: %.4g ms",
                    serial,
                    Path(path).name,
                    r + 1,
                    options.repeats,
                    runs[-1]["parsed"]["inference_avg_us"] / 1000.0,
                )
            thermal_after = read_thermal(adb, serial)
            result = summarize_runs(
                runs,
                path,
                info,
                props,
                runtime,
                digest,
                str(binary),
                governor,
                thermal_after,
                command,
                options,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)  # stored first: a file that cannot be written loses no measurement
            if options.out_dir:
                _write_files(options.out_dir, serial, path, i, result)
            adb.shell(serial, f"rm -f {remote_model}", check=False)
    finally:
        _cleanup(adb, serial, run_dir)
    return results


def _one_run(
    adb: Adb, serial: str, model: str, command: str, options: BenchOptions, r: int
) -> dict[str, Any]:
    thermal = read_thermal(adb, serial)
    started = time.time()
    try:
        proc = adb.shell(serial, command, timeout_s=options.timeout_s, check=False)
    except AdbTimeout as e:
        raise AdbTimeout(f"{e}{_slow_model_hint(options)}", e.seconds) from e
    seconds = time.time() - started
    # both streams: the tool logs to one or the other depending on its version (see parse.py)
    text = "\n".join(t.rstrip("\n") for t in (proc.stdout, proc.stderr) if t.strip()) + "\n"
    if proc.returncode != 0 and (known := classify(proc.stderr, serial, adb)) is not None:
        raise known
    try:
        parsed = parse_benchmark_output(text)
    except BenchmarkOutputError as e:
        state = adb.state(serial)  # no result: a phone that went away explains it best
        if state != READY:
            raise state_error(serial, state, adb) from e
        where = f"{Path(model).name} on phone {serial!r} (exit {proc.returncode})"
        raise BenchmarkOutputError(f"{where}: {e}") from e
    return {
        "parsed": parsed,
        "raw": text,
        "thermal_before": thermal,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 3),
        "repeat": r,
    }


def _slow_model_hint(options: BenchOptions) -> str:
    """The fix for a benchmark that was just slow, naming the flag that sets the limit where the
    command has one (a hint to raise a flag the command lacks only sends the user to --help)."""
    if options.timeout_flag is None:
        return ""
    return f" (a model this slow needs more: raise {options.timeout_flag}, now {options.timeout_s:g} s)"


def summarize_runs(
    runs: list[dict[str, Any]],
    model: str,
    info: DeviceInfo,
    props: dict[str, str],
    runtime: str,
    digest: str,
    binary: str,
    governor: str | None,
    thermal_after: dict[str, Any],
    command: str,
    options: BenchOptions,
) -> LatencyResult:
    """One :class:`LatencyResult` from a model's repeated runs (see the module docstring)."""
    parsed = [r["parsed"] for r in runs]
    avgs_us = np.array([p["inference_avg_us"] for p in parsed], dtype=np.float64)
    counts = np.array([p["count"] or options.runs for p in parsed], dtype=np.float64)
    stats = summarize(avgs_us / 1000.0)
    mean_us = float((avgs_us * counts).sum() / counts.sum())
    stds = [p["inference_std_us"] for p in parsed]
    if all(s is not None for s in stds):  # pooled: the std of all timed inferences together
        var = float((counts * (np.square(stds) + np.square(avgs_us - mean_us))).sum() / counts.sum())
        std_ms = math.sqrt(max(var, 0.0)) / 1000.0
    else:
        std_ms = stats["std_ms"]
    mins = [p["inference_min_us"] for p in parsed if p["inference_min_us"] is not None]
    drift = float(abs(avgs_us[-1] / avgs_us[0] - 1.0)) if len(avgs_us) > 1 and avgs_us[0] > 0 else None
    peak_mb = max((p["peak_memory_mb"] or p["overall_memory_mb"] or 0.0) for p in parsed)

    def median_of(key: str, scale: float = 1.0) -> float | None:
        vals = [p[key] for p in parsed if p[key] is not None]
        return float(np.median(vals)) * scale if vals else None

    def max_of(key: str) -> float | None:
        vals = [p[key] for p in parsed if p[key] is not None]
        return max(vals) if vals else None

    extra: dict[str, Any] = {
        "repeat_avg_ms": [float(a) / 1000.0 for a in avgs_us],
        "repeats": [
            {
                "avg_ms": p["inference_avg_us"] / 1000.0,
                "std_ms": None if p["inference_std_us"] is None else p["inference_std_us"] / 1000.0,
                "min_ms": None if p["inference_min_us"] is None else p["inference_min_us"] / 1000.0,
                "count": p["count"],
                "warmup_count": p["warmup_count"],
                "thermal_before": r["thermal_before"],
                "exit_code": r["exit_code"],
                "seconds": r["seconds"],
            }
            for p, r in zip(parsed, runs)
        ],
        "raw_output": [r["raw"] for r in runs],
        "parsed": parsed,
        "init_ms": median_of("init_us", 1e-3),
        "first_inference_ms": median_of("first_inference_us", 1e-3),
        "warmup_avg_ms": median_of("warmup_avg_us", 1e-3),
        "init_memory_mb": max_of("init_memory_mb"),
        "overall_memory_mb": max_of("overall_memory_mb"),
        "peak_memory_mb": max_of("peak_memory_mb"),
        "thermal": {"before": runs[0]["thermal_before"], "after": thermal_after},
        "governor": governor,
        "xnnpack": options.use_xnnpack,
        "taskset": options.taskset,
        "cooldown_s": options.cooldown_s,
        "runs_requested": options.runs,
        "min_seconds": options.min_seconds,
        "command": command,
        "binary": {"path": binary, "sha256": digest, "reported_version": parsed[-1]["runtime_version"]},
        "device_props": dict(props),
        "device_info": info.to_dict(),
        "model_sha256": sha256_file(model),
    }
    if drift is not None and drift > DRIFT_WARN:
        extra["drift_warning"] = (
            f"the runs' averages changed by {drift:.0%} from first to last: the phone is throttling or "
            f"busy; raise --cooldown, let it cool, close other apps"
        )
    return LatencyResult(
        mean_ms=mean_us / 1000.0,
        p50_ms=stats["p50_ms"],
        p90_ms=stats["p90_ms"],
        std_ms=std_ms,
        min_ms=(min(mins) / 1000.0) if mins else stats["min_ms"],
        n_runs=int(counts.sum()),
        n_warmup=options.warmup,
        threads=options.threads,
        backend=BACKEND,
        runtime_version=runtime,
        device=info.name,
        device_fingerprint=info.fingerprint,
        model_path=model,
        model_bytes=Path(model).stat().st_size,
        peak_memory_bytes=int(round(peak_mb * 2**20)),
        drift=drift,
        affinity=options.affinity,
        extra=extra,
    )


def bench_devices(
    adb: Adb,
    serials: Sequence[str],
    models: Sequence[str],
    options: BenchOptions,
    on_result: Callable[[LatencyResult], None] | None = None,
) -> BenchReport:
    """Benchmark on several phones at once, one worker thread per phone.

    ``on_result`` runs in the calling thread, once per finished model, as soon as it is finished
    (store it there). A phone that fails ends up in ``failures`` (its finished models stay in
    ``results``); the others go on. Errors that are not :class:`ProfilingError` / ``OSError`` are
    bugs: they are re-raised once every worker has stopped."""
    report = BenchReport()
    finished: queue.Queue[LatencyResult] = queue.Queue()
    stop = threading.Event()
    bugs: list[BaseException] = []

    def deliver() -> None:
        while True:
            try:
                r = finished.get_nowait()
            except queue.Empty:
                return
            report.results.append(r)
            if on_result is not None:
                on_result(r)

    pool = ThreadPoolExecutor(max_workers=max(1, len(serials)), thread_name_prefix="adb")
    futures = {pool.submit(bench_device, adb, s, models, options, finished.put, stop): s for s in serials}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.1)
            deliver()
            for f in done:
                e = f.exception()
                if isinstance(e, (ProfilingError, OSError)):
                    report.failures[futures[f]] = _one_line(e)
                elif e is not None:
                    bugs.append(e)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)
        deliver()
    if bugs:
        raise bugs[0]
    report.failures = {s: report.failures[s] for s in serials if s in report.failures}
    return report


def measure_adb(
    paths: list[str],
    backend: Any = None,
    settings: ProfileSettings | None = None,
    device: DeviceInfo | None = None,
) -> list[LatencyResult]:
    """The ``adb`` backend's measure function (``nasctl.profiling`` calls it): one run per model on the
    phone named by ``device.name`` (a serial), or on the only phone attached; adb from ``PATH`` and
    the binary from the cache."""
    from .device import choose_devices

    settings = settings or ProfileSettings()
    adb = Adb()
    if device is not None and device.name not in ("", "host"):
        serial = device.name
    else:
        serial = choose_devices(adb)[0]
    return bench_device(adb, serial, list(paths), BenchOptions.for_profiling(settings))


def _cleanup(adb: Adb, serial: str, run_dir: str) -> None:
    """Remove this run's folder from the phone; say how to do it by hand when the phone cannot."""
    try:
        proc = adb.shell(serial, f"rm -rf {run_dir}", timeout_s=CLEANUP_TIMEOUT_S, check=False)
        failed = proc.returncode != 0
        why = (proc.stderr or proc.stdout or f"exit {proc.returncode}").strip().splitlines()[-1:] or [""]
    except AdbError as e:  # the phone is gone: nothing left to clean where we can reach
        failed, why = True, [str(e)]
    if failed:
        log.warning("%s: could not remove %s (%s); remove it by hand: adb -s %s shell rm -rf %s",
                    serial, run_dir, why[0], serial, run_dir)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Cancelled("stopped")


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled("stopped")


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, ProfilingError) else f"{e.strerror or e} ({getattr(e, 'filename', '')})"
    return " ".join(text.split())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def out_files(out_dir: str | Path, serial: str, model: str, index: int, repeats: int) -> list[Path]:
    """The files ``--out`` gets for one model on one phone: each run's raw output, then the result."""
    folder = Path(out_dir) / _safe(serial)
    stem = f"{index:02d}-{_safe(Path(model).stem)}"
    return [folder / f"{stem}.run{k + 1}.txt" for k in range(repeats)] + [folder / f"{stem}.json"]


def check_out_dir(out_dir: str | None, serials: Sequence[str], models: Sequence[str], repeats: int) -> None:
    """Refuse, before any phone is used, an ``--out`` that already holds a file this run would write.
    Why: an earlier run's results are measurements that cannot be redone exactly (another day, another
    temperature); nasctl never replaces them."""
    if not out_dir:
        return
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ProfilingError(f"--out {out_dir!r} is a file, not a folder: give a folder path")
    taken = [
        p
        for serial in serials
        for i, model in enumerate(models)
        for p in out_files(root, serial, model, i, repeats)
        if os.path.lexists(p)
    ]
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise ProfilingError(
            f"--out {out_dir!r} already holds {str(taken[0])!r}{more} from an earlier run: nasctl bench "
            f"never overwrites results; give a new or empty --out folder (or move those files away)"
        )


def _write_files(out_dir: str, serial: str, model: str, index: int, result: LatencyResult) -> None:
    *raws, summary = out_files(out_dir, serial, model, index, len(result.extra["raw_output"]))
    for path, raw in zip(raws, result.extra["raw_output"]):
        write_new_file(path, raw)
    doc = finite_or_none(result.to_dict())  # what could not be measured is null, as in the store
    write_new_file(summary, json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")


def write_new_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, and only where no file is: a temp file beside it, fsynced,
    then hard-linked to the real name. Why not ``os.replace``: it would silently replace a file that
    another run wrote since :func:`check_out_dir` looked; a link fails instead (``EEXIST``). A file
    system without hard links gets the temp file renamed into place after a last check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600: give the file ordinary permissions
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ProfilingError(
                f"{str(path)!r} appeared while nasctl bench was running (another run with the same --out?): "
                f"it was left as it is and this result is only in the store; give each run its own --out"
            ) from None
        except OSError:  # no hard links here (some FUSE or FAT file systems)
            if os.path.lexists(path):
                raise ProfilingError(
                    f"{str(path)!r} already exists: give a new or empty --out folder"
                ) from None
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
