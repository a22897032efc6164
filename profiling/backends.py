"""Latency backends by name, imported lazily, and the host backends' measuring function.

A backend takes model files and returns one :class:`LatencyResult` per file. The host backends
(LiteRT, ONNX Runtime, PyTorch) time each batch in a fresh worker process
(:mod:`nasctl.profiling.worker`); a phone is one more backend, registered the same way, whose
``measure`` runs TFLite's ``benchmark_model`` over adb.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.core import did_you_mean

from .device import DeviceInfo, affinity, host_device
from .errors import ProfilingError
from .result import DRIFT_WARN, LatencyResult, summarize


@dataclass(frozen=True)
class ProfileSettings:
    """How to time: ``runs`` timed invocations at least, continued until ``min_seconds`` have passed
    (at most ``max_runs``: it caps what ``min_seconds`` adds, never the ``runs`` asked for; a result
    the cap stopped has ``extra["max_runs_hit"]``), after ``warmup`` untimed ones; the reference model
    is re-timed after every ``reference_every`` models of a batch to catch drift (a busy or throttling
    machine)."""

    threads: int = 1
    runs: int = 100
    warmup: int = 10
    min_seconds: float = 0.5
    max_runs: int = 5000
    reference_every: int = 25

    def __post_init__(self):
        for name in ("threads", "runs", "max_runs", "reference_every"):
            if int(getattr(self, name)) < 1:
                raise ProfilingError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.warmup < 0 or not math.isfinite(self.min_seconds) or self.min_seconds < 0:
            raise ProfilingError(
                f"--warmup and --min-seconds must be >= 0 (and --min-seconds a finite number of seconds), "
                f"got {self.warmup}, {self.min_seconds}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PHONE_MAX_THREADS = 16  # the cap on a phone whose core count is unknown: no phone SoC has more cores


def check_threads(threads: int, device: DeviceInfo | None = None, flag: str = "--threads") -> int:
    """``--threads`` for timing on ``device`` (None or ``host``: this machine): at least 1 and at most its
    cores -- on the host the CPUs this process may run on (its affinity), on a phone its core count
    (:data:`PHONE_MAX_THREADS` where unknown). More threads than cores time contention, not the model,
    and key the store on a setting no deployment uses. ``flag`` is the caller's name for the setting
    (the search's is ``--latency-threads``: its ``--threads`` are torch's). Returns ``threads``."""
    if device is None or device.name == "host":
        limit = max(1, len(affinity()))
        where = f"the cores this process may use on this machine: {limit}"
    elif device.cores > 0:
        limit, where = device.cores, f"phone {device.name!r} has {device.cores} cores"
    else:
        limit = PHONE_MAX_THREADS
        where = f"phone {device.name!r} did not say its core count; no phone has more than {limit}"
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ProfilingError(f"{flag} must be between 1 and {limit} ({where}), got {threads!r}: give a "
                             f"number in that range")
    return threads


@dataclass(frozen=True)
class Backend:
    """A registered backend: which files it measures and where its code lives (imported on use)."""

    name: str
    suffixes: tuple[str, ...]
    distribution: str  # the pip distribution whose version keys the store
    measure: str  # "module:function" -> (paths, settings, device) -> list[LatencyResult]
    help: str

    def runtime_version(self) -> str:
        try:
            return f"{self.distribution} {importlib.metadata.version(self.distribution)}"
        except importlib.metadata.PackageNotFoundError as e:
            raise ProfilingError(
                f"backend {self.name!r} needs the package {self.distribution!r}, which is not "
                f"installed: pip install -e '.[export]'"
            ) from e

    def measure_fn(self) -> Callable[..., list[LatencyResult]]:
        module, _, func = self.measure.partition(":")
        return getattr(importlib.import_module(module), func)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "litert",
            (".tflite",),
            "ai-edge-litert",
            "nasctl.profiling.backends:measure_host",
            "LiteRT interpreter, XNNPACK on (the runtime phones use)",
        ),
        Backend(
            "onnxruntime",
            (".onnx",),
            "onnxruntime",
            "nasctl.profiling.backends:measure_host",
            "ONNX Runtime, CPU execution provider",
        ),
        Backend(
            "torch",
            (".pt",),
            "torch",
            "nasctl.profiling.backends:measure_host",
            "PyTorch eager (a nasctl subnet checkpoint or a TorchScript file)",
        ),
    )
}


def register_backend(backend: Backend) -> None:
    """Add a backend (the Android one registers itself this way)."""
    BACKENDS[backend.name] = backend


# backends that live in another package and register themselves when it is imported
PLUGINS = {"adb": "nasctl.android_bench"}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS and name in PLUGINS:
        importlib.import_module(PLUGINS[name])
    if name not in BACKENDS:
        raise ProfilingError(
            f"unknown backend {name!r}{did_you_mean(name, BACKENDS)}; choose from {', '.join(BACKENDS)}"
        )
    return BACKENDS[name]


def backend_for(path: str | os.PathLike, name: str | None = None) -> Backend:
    """The named backend (checked against the file's type), or the default one for the file."""
    suffix = Path(path).suffix.lower()
    if name is not None:
        b = get_backend(name)
        if suffix not in b.suffixes:
            raise ProfilingError(
                f"backend {b.name!r} measures {'/'.join(b.suffixes)} files, not {str(path)!r}: "
                f"pass a {'/'.join(b.suffixes)} file or another --backend"
            )
        return b
    for b in BACKENDS.values():
        if suffix in b.suffixes:
            return b
    raise ProfilingError(f"{str(path)!r} is not a model file nasctl can time (.tflite, .onnx, .pt)")


def check_model_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ProfilingError(
            f"model file {str(p)!r} does not exist: pass the path of an exported model "
            f"(nasctl export writes model.onnx and model_*.tflite)"
        )
    if p.stat().st_size == 0:
        raise ProfilingError(f"model file {str(p)!r} is empty: export it again")
    return p


def measure(
    paths: Sequence[str | os.PathLike],
    backend: str | None = None,
    settings: ProfileSettings | None = None,
    device: DeviceInfo | None = None,
) -> list[LatencyResult]:
    """Time each model file on one backend; one :class:`LatencyResult` per file, in order.

    Raises :class:`ProfilingError` naming the first file that could not be measured."""
    if not paths:
        return []
    settings = settings or ProfileSettings()
    b = backend_for(paths[0], backend)
    for p in paths:
        backend_for(p, b.name)
        check_model_file(p)
    return b.measure_fn()([str(p) for p in paths], b, settings, device)


def measure_host(
    paths: list[str],
    backend: Backend,
    settings: ProfileSettings,
    device: DeviceInfo | None = None,
    reference: str | None = None,
    on_result: Callable[[LatencyResult], None] | None = None,
) -> list[LatencyResult]:
    """Time ``paths`` in one fresh worker process; ``reference`` (default: the first model) is re-timed
    through the batch, and the drift of its median is recorded with every result."""
    check_threads(settings.threads)  # every host timing starts here
    device = device or host_device()
    version = backend.runtime_version()
    job = {
        "backend": backend.name,
        "models": list(paths),
        "threads": settings.threads,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "min_seconds": settings.min_seconds,
        "max_runs": settings.max_runs,
        "reference": reference or paths[0],
        "reference_every": settings.reference_every,
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasctl.profiling.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    raw: list[dict[str, Any]] = []
    tail: dict[str, Any] = {}
    for line in proc.stdout:
        msg = json.loads(line)
        if "reference_medians_ms" in msg:
            tail = msg
        else:
            raw.append(msg)
            if on_result is not None and msg.get("ok"):
                on_result(_result(msg, backend, version, settings, device, None, ()))
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0 or not tail:
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise ProfilingError(
            f"the {backend.name} measuring process failed ({last[0][:200]}); run with -v for details"
        )
    for msg in raw:
        if not msg["ok"]:
            raise ProfilingError(
                f"cannot measure {msg['model']!r} with {backend.name}: {msg['error']} "
                f"(is it a valid, complete model file? export it again)"
            )
    refs = [r for r in tail["reference_medians_ms"] if math.isfinite(r)]
    drift = float(max(abs(r / refs[0] - 1.0) for r in refs)) if len(refs) > 1 and refs[0] > 0 else None
    return [_result(m, backend, version, settings, device, drift, tuple(tail["affinity"])) for m in raw]


def _result(
    msg: dict[str, Any],
    backend: Backend,
    version: str,
    settings: ProfileSettings,
    device: DeviceInfo,
    drift: float | None,
    cpus: tuple[int, ...],
) -> LatencyResult:
    extra = dict(msg.get("extra", {}))
    extra["input_shape"] = msg.get("input_shape")
    if drift is not None and drift > DRIFT_WARN:
        extra["drift_warning"] = (
            f"a reference model's median changed by {drift:.0%} during the session: the "
            f"machine was busy or throttling; measure again on a quiet machine"
        )
    times = msg["times_ms"]
    return LatencyResult(
        **summarize(times),
        n_runs=len(times),
        n_warmup=settings.warmup,
        threads=settings.threads,
        backend=backend.name,
        runtime_version=version,
        device=device.name,
        device_fingerprint=device.fingerprint,
        model_path=msg["model"],
        model_bytes=os.path.getsize(msg["model"]),
        peak_memory_bytes=int(msg["peak_memory_bytes"]),
        drift=drift,
        affinity=cpus,
        extra=extra,
    )


def median_of(results: Sequence[LatencyResult]) -> float:
    return float(np.median([r.p50_ms for r in results]))
