"""What one latency measurement is: :class:`LatencyResult`, units in every field name.

Every backend (host runtimes, Android phones) returns this one shape, so the store, the lookup
tables and the search's latency objective never care where a number came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyResult:
    """Latency statistics of one model on one backend and device.

    ``device`` is the device's name (``host``, a phone's serial); ``device_fingerprint`` identifies
    the hardware and OS, which is what the store keys on. ``peak_memory_bytes`` is the peak
    resident memory of the process that ran the model (0 where the backend cannot tell).
    ``drift`` is the relative change of a reference model's latency over the measuring session
    (None when no reference was re-timed); above :data:`DRIFT_WARN` the numbers are suspect.
    """

    mean_ms: float
    p50_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    n_runs: int
    n_warmup: int
    threads: int
    backend: str
    runtime_version: str
    device: str
    device_fingerprint: str
    model_path: str = ""
    model_bytes: int = 0
    peak_memory_bytes: int = 0
    drift: float | None = None
    affinity: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific: raw output, governor, ...

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["affinity"] = list(self.affinity)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["affinity"] = tuple(kw.get("affinity", ()))
        return cls(**kw)


DRIFT_WARN = 0.10  # a reference model 10 % slower or faster than at the start: the machine changed


def summarize(times_ms: list[float] | np.ndarray) -> dict[str, float]:
    """mean / p50 / p90 / std / min of per-run times in ms (the statistics every backend reports)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timed runs")
    return {
        "mean_ms": float(t.mean()),
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0,
        "min_ms": float(t.min()),
    }
