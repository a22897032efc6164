"""The device side's ``benchmark_model``, for the adbd emulator (tests/adbd_emulator.py): TFLite's
benchmark tool re-done on the host with the LiteRT interpreter (``ai_edge_litert``).

It times the model for real -- load, ``allocate_tensors``, random inputs, then warm-up and timed
``invoke()`` loops as ``BenchmarkModel::RunImpl`` does them (at least N runs AND at least S seconds,
stopping at ``--max_secs``) -- and prints what the real tool prints, in its format: the ``INFO:``
prefixed log of a current build on stdout (parameters given, model size, init time, one statistics
line per loop as ``Stat::OutputToStream`` writes it: integer microseconds, averages as a C++ double
with 6 significant digits, p5/median/p95 as in the nightly builds, ``count=1 curr=X`` for a single
run), the ``Inference timings in us`` summary and the memory-footprint lines (peak RSS deltas from
the start of the tool, in MB). LiteRT's own messages (``Created TensorFlow Lite XNNPACK delegate``)
go to stderr, as on a phone. The version line says ``LiteRT Version : X``: this is the host's
runtime, not a phone's.

Flags honoured (``--flag=value``, as the real tool takes them): ``--graph``, ``--num_threads``,
``--num_runs``, ``--min_secs``, ``--max_secs``, ``--warmup_runs``, ``--warmup_min_secs`` (the real
default is 0.5 s), ``--use_xnnpack`` (false: LiteRT's built-in kernels without the default
delegate). Any other flag gets the real tool's ``Unconsumed cmdline flags`` warning. A missing or
unreadable model prints ``Failed to mmap model`` / ``Benchmarking failed.`` and exits 1.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time

import numpy as np

DEFAULTS = {
    "graph": "",
    "num_threads": "-1",
    "num_runs": "50",
    "min_secs": "1.0",
    "max_secs": "150.0",
    "warmup_runs": "1",
    "warmup_min_secs": "0.5",
    "use_xnnpack": "true",
}
LABELS = {  # as BenchmarkModel / the TFLite model logs its parameters
    "num_runs": "Min num runs",
    "min_secs": "Min runs duration (seconds)",
    "max_secs": "Max runs duration (seconds)",
    "num_threads": "Num threads",
    "warmup_runs": "Min warmup runs",
    "warmup_min_secs": "Min warmup runs duration (seconds)",
    "graph": "Graph",
    "use_xnnpack": "Use xnnpack",
}


def log(msg: str, level: str = "INFO") -> None:
    print(f"{level}: {msg}", flush=True)


def g(x: float) -> str:
    """A C++ ``double`` on an ostream: 6 significant digits (``1.04176e+06`` from a million up)."""
    if math.isnan(x):
        return "nan"
    return f"{x:g}"


def parse_flags(argv: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    values, given, unconsumed = dict(DEFAULTS), [], []
    for arg in argv:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in DEFAULTS and eq:
            if name in given:
                log(f"Duplicate flags: {name}", "ERROR")
            values[name] = value
            given.append(name)
        else:
            unconsumed.append(arg)
    return values, given, unconsumed


def as_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_loop(interpreter, min_runs: int, min_secs: float, max_secs: float) -> list[int]:
    """``RunImpl``: at least ``min_runs`` AND at least ``min_secs``, never past ``max_secs``."""
    times: list[int] = []
    start = time.perf_counter()
    now = start
    while (len(times) < min_runs or now - start < min_secs) and now - start <= max_secs:
        t0 = time.perf_counter_ns() // 1000  # NowMicros(): whole microseconds, as the real tool
        interpreter.invoke()
        times.append(time.perf_counter_ns() // 1000 - t0)
        now = time.perf_counter()
    return times


def stat_line(times: list[int]) -> str:
    """``Stat::OutputToStream``."""
    if not times:
        return "count=0"
    if len(set(times)) == 1:
        return f"count={len(times)} curr={times[-1]}" + ("(all same)" if len(times) > 1 else "")
    a = np.asarray(times, dtype=np.float64)
    std = int(round(math.sqrt(max(float(np.mean(a * a) - np.mean(a) ** 2), 0.0))))
    ranked = np.sort(a)

    def pct(p: float) -> int:
        return int(ranked[min(len(ranked) - 1, int(p / 100.0 * len(ranked)))])

    return (
        f"count={len(times)} first={times[0]} curr={times[-1]} min={int(a.min())} max={int(a.max())} "
        f"avg={g(float(a.mean()))} std={std} p5={pct(5)} median={pct(50)} p95={pct(95)}"
    )


def main(argv: list[str]) -> int:
    from ai_edge_litert import __version__ as litert_version
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    start_mb = rss_mb()
    flags, given, unconsumed = parse_flags(argv)
    log("STARTING!")
    log(f"LiteRT Version : {litert_version}")
    if unconsumed:
        log(f"Unconsumed cmdline flags: {' '.join(unconsumed)}", "WARNING")
    log("Log parameter values verbosely: [0]")
    for name in DEFAULTS:
        if name in given:
            value = flags[name]
            shown = str(int(as_bool(value))) if name == "use_xnnpack" else value
            log(f"{LABELS[name]}: [{shown}]")
    graph = flags["graph"]
    if not graph:
        log("Please specify the name of your TF Lite input file with --graph", "ERROR")
        log("Benchmarking failed.", "ERROR")
        return 1
    threads = int(flags["num_threads"])
    threads = threads if threads > 0 else (os.cpu_count() or 1)
    log(f"#threads used for CPU inference: [{threads}]")
    t_init = time.perf_counter()
    resolver = OpResolverType.AUTO if as_bool(flags["use_xnnpack"]) else (
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interpreter = Interpreter(
            model_path=graph, num_threads=threads, experimental_op_resolver_type=resolver
        )
        log(f"Loaded model {graph}")
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as e:
        log(f"Failed to mmap model {graph} ({type(e).__name__})", "ERROR")
        log("Benchmarking failed.", "ERROR")
        return 1
    rng = np.random.default_rng(0)  # the real tool fills inputs with random values once
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            value = rng.random(d["shape"]).astype(dtype)
        else:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, d["shape"], dtype=dtype, endpoint=True)
        interpreter.set_tensor(d["index"], value)
    init_us = int((time.perf_counter() - t_init) * 1e6)
    init_mb = rss_mb()
    log(f"The input model file size (MB): {g(os.path.getsize(graph) / 1e6)}")
    log(f"Initialized session in {g(init_us / 1e3)}ms.")

    max_secs = float(flags["max_secs"])
    runs = [(int(flags["warmup_runs"]), float(flags["warmup_min_secs"])),
            (int(flags["num_runs"]), float(flags["min_secs"]))]
    stats = []
    for min_runs, min_secs in runs:
        log(f"Running benchmark for at least {min_runs} iterations and at least {g(min_secs)} seconds but "
            f"terminate if exceeding {g(max_secs)} seconds.")
        stats.append(run_loop(interpreter, min_runs, min_secs, max_secs))
        log(stat_line(stats[-1]) + "\n")
    warmup, timed = stats

    def avg(t: list[int]) -> float:
        return sum(t) / len(t) if t else math.nan

    first = warmup[0] if warmup else 0
    log(f"Inference timings in us: Init: {init_us}, First inference: {first}, Warmup (avg): "
        f"{g(avg(warmup))}, Inference (avg): {g(avg(timed))}")
    log("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to "
        "the actual memory footprint of the model at runtime. Take the information at your discretion.")
    log(f"Memory footprint delta from the start of the tool (MB): init={g(init_mb - start_mb)} "
        f"overall={g(rss_mb() - start_mb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
