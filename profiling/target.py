"""Where models are timed for tables, calibrations and the search: the host's LiteRT, or an Android
phone's ``benchmark_model`` over adb (``adb:SERIAL``).

A :class:`MeasureTarget` knows the device's fingerprint and the runtime's version before anything is
measured, so the store can be asked what it already holds (a table is built once per device and
runtime, and an interrupted build continues); its :meth:`~MeasureTarget.measure` times TFLite files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .backends import Backend, ProfileSettings, get_backend, measure_host
from .device import DeviceInfo, host_device
from .errors import ProfilingError
from .result import LatencyResult
from .store import Scope

ADB_PREFIX = "adb:"
# device kinds measured by a plug-in package, as module:function (the backends' ``measure`` convention),
# loaded on first use: a phone target is built by the layer above (android_bench), which profiling never
# imports
DEVICE_PLUGINS = {ADB_PREFIX: "nasctl.android_bench.target:phone_target"}


@dataclass
class MeasureTarget:
    label: str  # "host" or "adb:SERIAL": how the user names it
    device: DeviceInfo
    backend: Backend
    runtime_version: str
    threads: int
    _measure: Callable[[list[str], ProfileSettings], list[LatencyResult]]

    def scope(self, precision: str) -> Scope:
        return Scope(
            self.device.fingerprint, self.backend.name, self.runtime_version, precision, self.threads
        )

    def measure(self, paths: Sequence[str], settings: ProfileSettings) -> list[LatencyResult]:
        return self._measure([str(p) for p in paths], settings)


def check_device_name(device: str) -> str:
    if device == "host" or (device.startswith(ADB_PREFIX) and len(device) > len(ADB_PREFIX)):
        return device
    raise ProfilingError(
        f"unknown device {device!r}: use host (this machine) or adb:SERIAL (a phone; "
        f"nasctl devices lists the serials)"
    )


def resolve_target(
    device: str = "host",
    threads: int = 1,
    adb: str | None = None,
    benchmark_binary: str | None = None,
    timeout_s: float | None = None,
    timeout_flag: str | None = None,
) -> MeasureTarget:
    """The target named ``host`` or ``adb:SERIAL`` (adb from ``adb`` or PATH; the phone's
    ``benchmark_model`` from ``benchmark_binary`` or the cache, see docs/android.md). A phone is asked
    who it is here, so a serial adb does not list fails now, before anything is measured or stored.
    ``timeout_s`` limits one benchmark_model run on a phone (default 600 s); ``timeout_flag`` is the
    caller's flag that set it, named when a run times out."""
    check_device_name(device)
    if device == "host":
        backend = get_backend("litert")
        info = host_device()
        return MeasureTarget(
            "host",
            info,
            backend,
            backend.runtime_version(),
            threads,
            lambda paths, s: measure_host(paths, backend, s, info),
        )
    module, func = DEVICE_PLUGINS[ADB_PREFIX].split(":")
    phone_target = getattr(importlib.import_module(module), func)
    return phone_target(device, threads, adb, benchmark_binary, timeout_s, timeout_flag)
