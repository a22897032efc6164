"""A phone as a measuring target of :mod:`nasctl.profiling` (``adb:SERIAL``): profiling names this
plug-in in ``DEVICE_PLUGINS`` and builds the target through it, so tables, calibrations and the
search's ``--latency-source lut:adb:SERIAL`` time models on the phone without profiling importing adb.
"""

from __future__ import annotations

from nasctl.profiling.backends import ProfileSettings, get_backend
from nasctl.profiling.result import LatencyResult
from nasctl.profiling.target import ADB_PREFIX, MeasureTarget

from .adb import Adb
from .runner import BenchOptions, bench_device, phone_runtime


def phone_target(device: str, threads: int = 1, adb: str | None = None, benchmark_binary: str | None = None,
                 timeout_s: float | None = None, timeout_flag: str | None = None) -> MeasureTarget:
    """The phone ``adb:SERIAL``, asked who it is now (a serial adb does not list fails here, before
    anything is measured or stored), with ``benchmark_model`` from ``benchmark_binary`` or the cache."""
    serial = device[len(ADB_PREFIX):]
    BenchOptions.for_profiling(ProfileSettings(threads=threads), None, timeout_s)  # bad flags fail first
    tool = Adb(adb)
    info, _, binary, version = phone_runtime(tool, serial, benchmark_binary)

    def measure(paths: list[str], s: ProfileSettings) -> list[LatencyResult]:
        options = BenchOptions.for_profiling(s, str(binary), timeout_s, timeout_flag)
        return bench_device(tool, serial, paths, options)

    return MeasureTarget(device, info, get_backend("adb"), version, threads, measure)
