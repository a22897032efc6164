"""TFLite ``benchmark_model`` output -> numbers: one pure function, :func:`parse_benchmark_output`.

What the tool prints (``tensorflow/lite/tools/benchmark/benchmark_model.cc``; every value in
**microseconds** unless the line says MB)::

    count=15 first=49060 curr=33682 min=32825 max=49060 avg=34825.1 std=3930     <- warm-up runs
    count=50 first=32891 curr=33978 min=32641 max=34005 avg=33209.4 std=450      <- timed runs
    Inference timings in us: Init: 855, First inference: 49060, Warmup (avg): 34825.1,
      Inference (avg): 33209.4                          (one line in the real output)
    Memory footprint delta from the start of the tool (MB): init=7.40234 overall=7.83203

Facts the parser relies on, all checked against the real samples in ``tests/data/benchmark_model/``:

* averages are C++ ``double`` s printed with the default 6 significant digits, so anything from
  1 s up prints in scientific notation (``Warmup (avg): 1.04176e+06``); counts, init, first, min,
  max and std are integers;
* the log goes to stderr in some builds and to stdout in others, and the TFLite runtime's own
  messages (``INFO: Created TensorFlow Lite XNNPACK delegate``) to stderr: the caller passes both
  streams together, in any order, and lines may carry prefixes (``INFO:``, logcat's
  ``07-08 15:34:26.202 I/tflite  ( 5395):``) or indentation;
* older builds print ``Peak memory footprint (MB): init=.. overall=..`` instead of the "delta"
  wording, and the oldest ``Average inference timings in us: Warmup: .., Init: .., no stats: ..``;
* a log holding several runs (a shell loop) is read from its last summary line backwards.
"""

from __future__ import annotations

import math
import re
from typing import Any

from nasctl.profiling.errors import ProfilingError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_SUMMARY = re.compile(
    rf"Inference timings in us:\s*Init:\s*(?P<init>{_NUM}),\s*First inference:\s*(?P<first>{_NUM}),"
    rf"\s*Warmup \(avg\):\s*(?P<warmup>{_NUM}),\s*Inference \(avg\):\s*(?P<avg>{_NUM})"
)
_LEGACY_SUMMARY = re.compile(
    rf"Average inference timings in us:\s*Warmup:\s*(?P<warmup>{_NUM}),\s*Init:\s*(?P<init>{_NUM}),"
    rf"\s*no stats:\s*(?P<avg>{_NUM})"
)
_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):\s*"
    rf"init=(?P<init>{_NUM})\s+overall=(?P<overall>{_NUM})"
)
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*(?P<peak>{_NUM})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\):\s*(?P<mb>{_NUM})")
_VERSION = re.compile(r"(?:TensorFlow|Tensorflow|LiteRT) Version\s*:\s*(?P<version>\S+)")
_STAT_LINE = re.compile(r"\bcount=\d")
_STAT_FIELD = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUM})")

KEYS = (
    "init_us",
    "first_inference_us",
    "warmup_avg_us",
    "inference_avg_us",
    "inference_std_us",
    "inference_min_us",
    "inference_max_us",
    "inference_median_us",
    "count",
    "warmup_count",
    "init_memory_mb",
    "overall_memory_mb",
    "peak_memory_mb",
    "model_size_mb",
    "runtime_version",
    "format",
)


class BenchmarkOutputError(ProfilingError):
    """benchmark_model's output holds no result (it failed, or it is not benchmark_model's output)."""


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """The numbers in one ``benchmark_model`` run's output (stdout and stderr together).

    Returns a dict with every key of :data:`KEYS`; a key whose line the output lacks is None.
    Times are in microseconds (``*_us``), memory in MB (``*_mb``, as the tool prints it: MiB
    deltas from the start of the tool), counts are ints; ``format`` is ``"summary"`` or
    ``"legacy"`` (the oldest builds). ``inference_std_us`` / ``_min_us`` / ``_max_us`` /
    ``count`` come from the timed runs' statistics line, ``warmup_count`` from the warm-up one.

    Raises :class:`BenchmarkOutputError` (one line, quoting the output's last lines) when there is
    no inference summary line or it holds no timed run.
    """
    text = (text or "").replace("\r", "")
    summaries = [(m, "summary") for m in _SUMMARY.finditer(text)]
    summaries += [(m, "legacy") for m in _LEGACY_SUMMARY.finditer(text)]
    if not summaries:
        raise BenchmarkOutputError(
            "benchmark_model printed no 'Inference timings in us' line, so it did not finish a "
            f"benchmark; its last lines: {_tail(text)}"
        )
    summaries.sort(key=lambda item: item[0].start())
    match, fmt = summaries[-1]
    before = summaries[-2][0].end() if len(summaries) > 1 else 0
    out: dict[str, Any] = dict.fromkeys(KEYS)
    out["format"] = fmt
    out["init_us"] = _num(match["init"])
    out["first_inference_us"] = _num(match["first"]) if fmt == "summary" else None
    out["warmup_avg_us"] = _num(match["warmup"])
    out["inference_avg_us"] = _num(match["avg"])
    if out["inference_avg_us"] is None:
        raise BenchmarkOutputError(
            f"benchmark_model timed no inference run (Inference (avg): {match['avg']}); check "
            f"--runs and the model; its last lines: {_tail(text)}"
        )

    segment = text[before : match.start()]
    stats = [_stat_fields(line) for line in segment.splitlines() if _STAT_LINE.search(line)]
    if not stats:  # the statistics went to the other stream, which the caller put after the summary
        stats = [_stat_fields(line) for line in text.splitlines() if _STAT_LINE.search(line)]
    if stats:
        timed = stats[-1]
        out["count"] = int(timed["count"])
        out["inference_std_us"] = timed.get("std", 0.0 if "min" not in timed else None)
        out["inference_min_us"] = timed.get("min", timed.get("curr"))
        out["inference_max_us"] = timed.get("max", timed.get("curr"))
        out["inference_median_us"] = timed.get("median")
        if len(stats) > 1:
            out["warmup_count"] = int(stats[-2]["count"])

    after = text[before:]  # memory lines follow the summary; take the last of this run
    if mem := _last(_MEMORY, after):
        out["init_memory_mb"] = _num(mem["init"])
        out["overall_memory_mb"] = _num(mem["overall"])
    if peak := _last(_PEAK, after):
        out["peak_memory_mb"] = _num(peak["peak"])
    if size := _last(_MODEL_SIZE, text[before:]):
        out["model_size_mb"] = _num(size["mb"])
    if version := _last(_VERSION, text):
        out["runtime_version"] = version["version"]
    return out


def _num(s: str) -> float | None:
    """A printed number; None for ``nan`` / ``inf`` (the tool prints ``nan`` for the average of no runs,
    e.g. ``Warmup (avg)`` after zero warm-up runs): a value that was not measured is absent, not nan."""
    value = float(s)
    return value if math.isfinite(value) else None


def _stat_fields(line: str) -> dict[str, float]:
    return {k: v for k, text in _STAT_FIELD.findall(line) if (v := _num(text)) is not None}


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - we want the last one
        pass
    return found


def _tail(text: str, lines: int = 3, width: int = 300) -> str:
    last = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    if not last:
        return "(no output at all)"
    quoted = " | ".join(last)
    return repr(quoted if len(quoted) <= width else "..." + quoted[-width:])
