"""Latency sources for the search's ``latency_ms`` objective: ``lut:DEVICE`` (the device's lookup
table, calibrated) and ``measure:DEVICE`` (convert and time every candidate, cached by genome).

The spec is a string so it travels in a run's ``config.json``; :func:`open_latency_source` turns it
into a callable ``genome -> ms`` bound to one store, space and input shape. Android devices
(``adb:SERIAL``) plug in through :data:`DEVICE_KINDS` once registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nasctl.core import did_you_mean
from nasctl.nas.data import DatasetInfo
from nasctl.nas.space import Genome, SearchSpace

from .backends import ProfileSettings, check_threads
from .errors import ProfilingError
from .lut import load_table, lut_settings, measure_genomes
from .store import MeasurementStore
from .target import ADB_PREFIX, MeasureTarget, check_device_name, resolve_target

SOURCE_KINDS = ("lut", "measure")
PRECISIONS = ("int8", "float32")


@dataclass(frozen=True)
class LatencySourceSpec:
    kind: str  # lut | measure
    device: str  # host | adb:SERIAL
    precision: str = "int8"
    threads: int = 1

    def describe(self) -> str:
        how = "lookup table, calibrated" if self.kind == "lut" else "measured whole model"
        runtime = "LiteRT" if self.device == "host" else "benchmark_model"
        return f"{self.kind}:{self.device} ({how}; {runtime} {self.precision}, {self.threads} thread(s))"


def parse_latency_source(text: str, precision: str = "int8", threads: int = 1) -> LatencySourceSpec:
    """``lut:host``, ``measure:host``, ``lut:adb:SERIAL`` (or ``lut:SERIAL``), ``measure:adb:SERIAL``
    and ``adb:SERIAL`` (a phone measuring every candidate) -> spec; one clear line for anything else."""
    text = text or ""
    if text.startswith(ADB_PREFIX):
        text = f"measure:{text}"
    kind, sep, device = text.partition(":")
    if not sep or kind not in SOURCE_KINDS or not device:
        hint = did_you_mean(kind, SOURCE_KINDS) if kind and kind not in SOURCE_KINDS else ""
        raise ProfilingError(
            f"--latency-source {text!r} is not KIND:DEVICE{hint}: use lut:host (the host's lookup table; "
            f"build it with nasctl profile --build-lut), measure:host (time every candidate), or "
            f"lut:adb:SERIAL / adb:SERIAL for a phone"
        )
    if device != "host" and not device.startswith(ADB_PREFIX):
        device = f"{ADB_PREFIX}{device}"  # lut:SERIAL: a phone's serial
    check_device_name(device)
    if precision not in PRECISIONS:
        raise ProfilingError(f"--latency-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads < 1:
        raise ProfilingError(f"--latency-threads must be at least 1, got {threads}")
    return LatencySourceSpec(kind, device, precision, threads)


class LatencySource:
    """``genome -> latency in ms`` for one space on one device; ``provenance`` says where numbers
    come from."""

    def __init__(
        self,
        spec: LatencySourceSpec,
        store: MeasurementStore,
        space: SearchSpace,
        info: DatasetInfo,
        target: MeasureTarget | None = None,
    ):
        self.spec, self.store, self.space, self.info = spec, store, space, info
        self.target = target or resolve_target(spec.device, spec.threads)
        self.scope = self.target.scope(spec.precision)
        self.settings: ProfileSettings = lut_settings(spec.threads)
        self._fn: Callable[[Genome], float]
        if spec.kind == "lut":
            table = load_table(store, space, info, self.scope, device=spec.device)
            if not table.fit:
                raise ProfilingError(
                    f"the lookup table for space {space.name!r} on {self.scope.describe()} is not "
                    f"calibrated: run nasctl profile --build-lut --device {spec.device} again (it "
                    f"calibrates last)"
                )
            self.table = table
            self._fn = table.predict_ms
        else:  # measured: the thread count must fit the device, said in the search's words
            check_threads(spec.threads, self.target.device, "--latency-threads")
            self._fn = self._measure

    def _measure(self, genome: Genome) -> float:
        return self.measure_many([genome])[0]

    def measure_many(self, genomes: list[Genome]) -> list[float]:
        """Whole-model median latency (ms) of each genome on this source's device, backend, precision and
        threads -- what ``measure:DEVICE`` answers, whatever this source's kind: the search's latency
        check times a ``lut:`` front with it. Converted and timed in batches, cached in the store by
        genome (a genome timed before, e.g. a calibration subnet, is not timed again)."""
        r = measure_genomes(
            self.space, self.info, list(genomes), self.store, self.spec.precision, self.settings, self.target
        )
        return [x.p50_ms for x in r]

    def __call__(self, genome: Genome) -> float:
        return float(self._fn(genome))

    @property
    def provenance(self) -> dict:
        out = {
            "source": f"{self.spec.kind}:{self.spec.device}",
            "precision": self.spec.precision,
            "threads": self.spec.threads,
            "backend": self.scope[1],
            "runtime_version": self.scope[2],
            "device_fingerprint": self.scope[0],
            "device": self.target.device.to_dict(),
            "store": str(self.store.path),
        }
        if self.spec.kind == "lut":
            out["calibration"] = {k: v for k, v in (self.table.fit or {}).items() if k != "genomes"}
        return out


def open_latency_source(
    text: str,
    store: MeasurementStore,
    space: SearchSpace,
    info: DatasetInfo,
    precision: str = "int8",
    threads: int = 1,
) -> LatencySource:
    return LatencySource(parse_latency_source(text, precision, threads), store, space, info)


class LatencySources:
    """nasctl.profiling's latency sources as the search takes them (``nasctl.nas.search.LatencyProvider``):
    the caller hands one to ``search(..., latency=LatencySources())``, so the search never imports this
    package. ``check`` parses a spec (one line for a bad one); ``open`` opens the store at ``store`` and
    returns the :class:`LatencySource`."""

    def check(self, spec: str, precision: str = "int8", threads: int = 1) -> None:
        parse_latency_source(spec, precision, threads)

    def open(self, spec: str, store: str, space: SearchSpace, info: DatasetInfo, precision: str = "int8",
             threads: int = 1) -> LatencySource:
        return open_latency_source(spec, MeasurementStore(store).open(), space, info, precision, threads)
