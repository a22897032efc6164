"""``nasctl bench``: benchmark .tflite models on Android phones with TFLite's ``benchmark_model``.

Every finished model is printed and stored at once (kind ``model``, key = the file's SHA-256,
backend ``adb``), so a phone that fails later loses nothing already measured. One phone failing:
exit 2 and one line. Several phones: each failure is one line at the end, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import STORE_HELP, add_phone_flags, add_timing_flags, command_parser, timing_settings

DETAILS = (
    "Pushes the model and benchmark_model to /data/local/tmp/nasctl/, runs it --repeats times with a "
    "cool-down between runs, removes the files, and prints and stores latency (median and p90 over the runs) "
    "and memory. Set-up and where to get benchmark_model: docs/android.md."
)


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(sub, name, help_text, DETAILS)
    p.add_argument("models", nargs="+", metavar="MODEL", help=".tflite files (nasctl export --target tflite)")
    d = p.add_argument_group("phones")
    d.add_argument(
        "--device",
        action="append",
        metavar="SERIAL",
        help="phone serial from nasctl devices; repeat for several (default: the only phone)",
    )
    d.add_argument("--all", action="store_true", help="every phone adb lists, in parallel")
    add_phone_flags(d)
    m = p.add_argument_group("measurement (one benchmark_model run)")
    add_timing_flags(m)
    m.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="benchmark_model runs per model; median and p90 over them (default 3)",
    )
    m.add_argument(
        "--cooldown",
        type=float,
        default=5.0,
        help="seconds to sleep before each run but the first (default 5)",
    )
    m.add_argument(
        "--xnnpack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the XNNPACK delegate (default on, as apps do)",
    )
    m.add_argument("--taskset", metavar="MASK", help="pin to the CPUs of this hex mask, e.g. f0 (big cores)")
    m.add_argument("--timeout", type=float, default=600.0, help="seconds one benchmark_model run may take")
    o = p.add_argument_group("output")
    o.add_argument("--store", metavar="FILE", help=STORE_HELP)
    o.add_argument(
        "--precision",
        choices=("int8", "float32"),
        help="stored precision (default: int8 when the file name says int8, else float32)",
    )
    o.add_argument(
        "--out",
        metavar="DIR",
        help="also write each run's raw output and each result here (never over an earlier run's files)",
    )
    o.add_argument("--json", action="store_true", help="print one JSON object at the end instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.android_bench.adb import Adb
    from nasctl.android_bench.binary import check_tflite
    from nasctl.android_bench.device import choose_devices
    from nasctl.android_bench.runner import BenchOptions, bench_devices, check_out_dir
    from nasctl.core import sha256_file
    from nasctl.profiling.errors import ProfilingError
    from nasctl.profiling.store import MeasurementStore

    options = BenchOptions(
        **timing_settings(args),
        repeats=args.repeats,
        cooldown_s=args.cooldown,
        use_xnnpack=args.xnnpack,
        taskset=args.taskset,
        timeout_s=args.timeout,
        binary=args.benchmark_binary,
        out_dir=args.out,
    )
    if args.device and args.all:
        raise ProfilingError("give --device SERIAL (repeatable) or --all, not both")
    models = [str(check_tflite(m)) for m in args.models]
    keys = {m: sha256_file(m) for m in models}
    adb = Adb(args.adb)
    serials = choose_devices(adb, args.device, args.all)
    check_out_dir(args.out, serials, models, args.repeats)  # before any phone time is spent
    printed: list[dict] = []
    with MeasurementStore(args.store) as store:

        def keep(result) -> None:
            precision = args.precision or ("int8" if "int8" in Path(result.model_path).name else "float32")
            store.add("model", keys[result.model_path], result, precision)
            if args.json:
                printed.append({**result.to_dict(), "precision": precision, "key": keys[result.model_path]})
            else:
                _print_result(result, precision, store.path)

        report = bench_devices(adb, serials, models, options, keep)
    if args.json:
        print(json.dumps({"results": printed, "failures": report.failures, "store": str(store.path)}))
    if not report.failures:
        return 0
    if len(serials) == 1:
        raise ProfilingError(next(iter(report.failures.values())))
    for serial, line in report.failures.items():
        named = f"'{serial}'" in line  # most messages name the phone already
        print(f"nasctl: error: {'' if named else f'phone {serial}: '}{line}", file=sys.stderr)
    print(
        f"nasctl: {len(serials) - len(report.failures)} of {len(serials)} phones finished; their results "
        f"are stored",
        file=sys.stderr,
    )
    return 1


def _print_result(r, precision: str, store_path) -> None:
    e = r.extra
    info = e["device_info"]
    runs = len(e["repeat_avg_ms"])
    print(
        f"{r.device} {Path(r.model_path).name}: p50 {r.p50_ms:.4g} ms  p90 {r.p90_ms:.4g}  "
        f"mean {r.mean_ms:.4g}  std {r.std_ms:.3g}  min {r.min_ms:.4g}  "
        f"({r.n_runs} inferences in {runs} run(s), {r.n_warmup} warm-up each; "
        f"{r.threads} thread(s), XNNPACK {'on' if e['xnnpack'] else 'off'})"
    )
    parts = []
    if e["init_ms"] is not None:
        parts.append(f"init {e['init_ms']:.4g} ms")
    if e["first_inference_ms"] is not None:
        parts.append(f"first inference {e['first_inference_ms']:.4g} ms")
    if e["overall_memory_mb"] is not None:
        parts.append(f"memory init {e['init_memory_mb']:.3g} MB overall {e['overall_memory_mb']:.3g} MB")
    if parts:
        print("  " + "  ".join(parts))
    before, after = e["thermal"]["before"]["max_c"], e["thermal"]["after"]["max_c"]
    thermal = (
        f"thermal {before:.1f} -> {after:.1f} C"
        if before is not None and after is not None
        else "thermal n/a"
    )
    print(
        f"  {info['model']} ({info['board']}, {info['abi']}, {info['os']}, {info['cores']} cores), "
        f"fingerprint {r.device_fingerprint}; governor {e['governor'] or 'n/a'}; {thermal}"
    )
    print(f"  runtime {r.runtime_version}; stored as {precision} in {store_path}")
    if "drift_warning" in e:
        print(f"  warning: {e['drift_warning']}", file=sys.stderr)
