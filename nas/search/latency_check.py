"""The search's latency check: a front whose ``latency_ms`` a lookup table predicted, timed for real.

With ``--latency-source lut:DEVICE`` every ``latency_ms`` of the search (and the ``--max-latency-ms``
constraint) is the table's prediction. After the front's final evaluation the run converts each front
member and times it on the same device, backend, precision and threads as ``measure:DEVICE`` would
(:meth:`nasctl.profiling.source.LatencySource.measure_many`), records ``measured_latency_ms`` beside the
predicted ``latency_ms``, and with a limit flags ``latency_violation`` per member. ``measure:`` sources
are skipped: their front is measured already. A device that cannot be reached (a phone unplugged
since the search started) is one warning and no check; the run goes on.

:func:`check_front_latency` is the pure part (front, a measuring callable, the limit -> summary);
:func:`run_latency_check` wires it to a run's latency source.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from nasctl.errors import NasctlError

from ..space import Genome

log = logging.getLogger(__name__)

# what a device that is gone or a runtime that fails raises (ProfilingError is a NasctlError)
MEASURE_ERRORS = (NasctlError, OSError, subprocess.SubprocessError)


def check_front_latency(front: list[dict[str, Any]], measure: Callable[[Sequence[Genome]], list[float]],
                        max_latency_ms: float | None = None, source: str = "") -> dict[str, Any]:
    """Measure every member of ``front`` with ``measure`` (genomes -> ms, one call for all) and record
    ``measured_latency_ms`` in each entry (the predicted ``latency_ms`` is kept); with ``max_latency_ms``
    also ``latency_violation`` (measured above the limit) and one warning per violator.

    Returns the summary for ``pareto.json``'s ``latency_check``: ``source``, ``measured`` (members),
    ``violations``, ``max_latency_ms``, ``violators`` (front indices) and the prediction's error
    against the measurement (``max_error_pct``, ``mean_abs_error_pct``, signed: measured above predicted
    is positive). When ``measure`` fails the front is left as it was and the summary says ``skipped``.
    """
    summary: dict[str, Any] = {"source": source, "measured": 0, "violations": 0,
                               "max_latency_ms": max_latency_ms}
    if not front:
        return summary
    try:
        measured = [float(v) for v in measure([Genome.decode(r["genome"]) for r in front])]
    except MEASURE_ERRORS as e:
        log.warning("latency check skipped: the front could not be measured on %s (%s); its latency_ms "
                    "stays the prediction", source or "the latency source's device", e)
        return {**summary, "skipped": f"could not measure: {e}"}
    if len(measured) != len(front):
        raise ValueError(f"measure returned {len(measured)} latencies for {len(front)} front members")
    errors, violators = [], []
    for i, (rec, ms) in enumerate(zip(front, measured)):
        rec["measured_latency_ms"] = ms
        predicted = rec.get("latency_ms")
        if predicted is not None and predicted > 0:
            errors.append(100.0 * (ms - predicted) / predicted)
        if max_latency_ms is not None:
            rec["latency_violation"] = ms > max_latency_ms
            if rec["latency_violation"]:
                violators.append(i)
                shown = f"{predicted:.4g} ms" if predicted is not None else "none"
                log.warning("latency check: front member %d %s (%s params) measures %.4g ms, above "
                            "--max-latency-ms %g (predicted %s, %s)", i, rec["genome"],
                            f"{rec.get('params', 0):,}", ms, max_latency_ms, shown, source)
    summary.update(measured=len(front), violations=len(violators), violators=violators)
    if errors:
        summary["max_error_pct"] = round(max(errors, key=abs), 1)
        summary["mean_abs_error_pct"] = round(sum(abs(e) for e in errors) / len(errors), 1)
    limit = f", {len(violators)} above --max-latency-ms {max_latency_ms:g}" if max_latency_ms else ""
    log.info("latency check: %d front members measured on %s%s (prediction error up to %s %%)",
             len(front), source, limit, summary.get("max_error_pct", "n/a"))
    return summary


def run_latency_check(front: list[dict[str, Any]], latency, max_latency_ms: float | None,
                      enabled: bool = True) -> dict[str, Any] | None:
    """The check for a run with latency source ``latency`` (a :class:`LatencySource`, or None: no
    latency, no check and None returned). ``measure:`` sources and ``enabled=False`` are recorded as
    skipped, with the reason."""
    if latency is None:
        return None
    source = f"{latency.spec.kind}:{latency.spec.device}"
    base = {"source": source, "precision": latency.spec.precision, "threads": latency.spec.threads}
    if not enabled:
        return {**base, "measured": 0, "skipped": "turned off (--no-check-latency)"}
    if latency.spec.kind != "lut":
        return {**base, "measured": 0,
                "skipped": f"not needed: {source} measured every front member's latency_ms during the search"}
    return {**base, **check_front_latency(front, latency.measure_many, max_latency_ms, source)}
