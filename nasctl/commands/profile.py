"""``nasctl profile``: time a model file, build a device's latency lookup table, or predict a genome."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import (
    STORE_HELP,
    add_phone_flags,
    add_timing_flags,
    command_parser,
    progress_bar,
    timing_settings,
)

DETAILS = (
    "Three modes: MODEL times a file; --build-lut measures a space's lookup table and calibrates its "
    "predictor; --arch predicts (and with --measure, measures) one genome. Every number is stored."
)


def add_parser(sub, name: str, help_text: str) -> None:
    from nasctl.android_bench.runner import BenchOptions
    from nasctl.profiling.backends import ProfileSettings

    p = command_parser(sub, name, help_text, DETAILS)
    p.add_argument("model", nargs="?", metavar="MODEL", help="a .tflite, .onnx or .pt (subnet checkpoint)")
    p.add_argument(
        "--backend", help="litert (.tflite), onnxruntime (.onnx) or torch (.pt); default: by file type"
    )
    add_timing_flags(p)
    p.add_argument(
        "--max-runs",
        type=int,
        default=ProfileSettings.max_runs,
        help=f"on the host, stop at this many timed inferences even before --min-seconds have passed "
        f"(default {ProfileSettings.max_runs}; a result that stopped here says so)",
    )
    p.add_argument(
        "--device",
        default="host",
        help="host (default: this machine's runtimes) or adb:SERIAL (a phone's benchmark_model; MODEL must "
        "be .tflite); for MODEL, --build-lut and --arch",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--store", metavar="FILE", help=STORE_HELP)
    t = p.add_argument_group("lookup tables")
    t.add_argument(
        "--build-lut",
        action="store_true",
        help="measure every block of --space at every position "
        "and width, then calibrate the whole-model predictor",
    )
    t.add_argument("--arch", metavar="GENOME", help="predict this genome's latency from the device's table")
    t.add_argument(
        "--measure", action="store_true", help="with --arch: also convert and time the whole model"
    )
    t.add_argument("--space", help="digits, tam or a YAML file")
    t.add_argument(
        "--dataset",
        help="input shape of the models (default: digits for digits spaces, cifar10 "
        "otherwise; no data is loaded)",
    )
    phone = p.add_argument_group("with --device adb:SERIAL")
    add_phone_flags(phone)
    phone.add_argument(
        "--timeout",
        type=float,
        default=BenchOptions.timeout_s,
        help=f"seconds one benchmark_model run may take (default {BenchOptions.timeout_s:g})",
    )
    t.add_argument("--int8", action="store_true", help="full-int8 TFLite (default float32)")
    t.add_argument(
        "--calibration-subnets",
        type=int,
        default=20,
        help="whole subnets measured to calibrate the predictor (default 20)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.errors import NasctlError
    from nasctl.profiling.backends import ProfileSettings
    from nasctl.profiling.store import MeasurementStore
    from nasctl.profiling.target import check_device_name

    modes = [
        m for m, on in (("MODEL", args.model), ("--build-lut", args.build_lut), ("--arch", args.arch)) if on
    ]
    if len(modes) != 1:
        raise NasctlError(
            "give exactly one of MODEL, --build-lut or --arch (got "
            f"{' and '.join(modes) if modes else 'none'}); see nasctl profile --help"
        )
    settings = ProfileSettings(**timing_settings(args), max_runs=args.max_runs)
    check_device_name(args.device)
    # everything that can be wrong with the input (the device above all: a phone adb does not list) is
    # found before the store is opened, so a failed command stores nothing
    if args.model:
        target = _model_target(args)
        with MeasurementStore(args.store) as store:
            return _profile_file(args, settings, store, target)
    from nasctl.profiling.tasks import resolve_space

    if not args.space:
        raise NasctlError(f"{modes[0]} needs --space (digits, tam or a YAML file)")
    space, info = resolve_space(args.space, args.dataset)
    precision = "int8" if args.int8 else "float32"
    target = _target(args)
    with MeasurementStore(args.store) as store:
        if args.build_lut:
            return _build_lut(args, space, info, store, precision, target)
        return _predict(args, space, info, store, precision, target)


def _target(args):
    from nasctl.profiling.target import resolve_target

    return resolve_target(
        args.device, args.threads, args.adb, args.benchmark_binary, args.timeout, timeout_flag="--timeout"
    )


def _model_target(args):
    """None for the host (MODEL's own backend times it); the phone for ``--device adb:SERIAL``, once the
    file is known to be one it can run and the phone has answered."""
    from nasctl.android_bench.binary import check_tflite
    from nasctl.profiling.errors import ProfilingError

    if args.device == "host":
        return None
    if args.backend not in (None, "adb"):
        raise ProfilingError(
            f"--device {args.device} times .tflite files with the phone's benchmark_model, not with "
            f"--backend {args.backend}: leave out --backend, or use --device host"
        )
    check_tflite(args.model)
    return _target(args)


def _profile_file(args, settings, store, target) -> int:
    from nasctl.profiling.tasks import profile_file

    r = profile_file(args.model, args.backend, settings, store, target=target)
    if args.json:
        print(json.dumps({**r.to_dict(), "file_bytes": r.model_bytes}))
        _warn_cap(r, settings)
        return 0
    print(
        f"{r.model_path}: {r.backend} ({r.runtime_version}), {r.threads} thread(s), {r.device} "
        f"{r.device_fingerprint}"
    )
    print(
        f"  latency ms: p50 {r.p50_ms:.4g}  mean {r.mean_ms:.4g}  p90 {r.p90_ms:.4g}  std {r.std_ms:.3g}  "
        f"min {r.min_ms:.4g}  ({r.n_runs} runs after {r.n_warmup} warm-up)"
    )
    drift = f"  drift {r.drift:.1%}" if r.drift is not None else ""
    print(f"  file {r.model_bytes / 1024:.1f} KB  peak memory {r.peak_memory_bytes / 2**20:.1f} MB{drift}")
    if "drift_warning" in r.extra:
        print(f"  warning: {r.extra['drift_warning']}", file=sys.stderr)
    _warn_cap(r, settings)
    return 0


def _warn_cap(r, settings) -> None:
    """Say so when the run cap, not --min-seconds, ended the timing: the user asked for more time."""
    cap = r.extra.get("max_runs_hit")
    if cap:
        print(
            f"  warning: stopped at the --max-runs cap of {cap['max_runs']} timed runs after "
            f"{cap['timed_seconds']:.3g} s of the {settings.min_seconds:g} s --min-seconds asked for "
            f"({r.n_runs} runs made); raise --max-runs to time longer",
            file=sys.stderr,
        )


def _build_lut(args, space, info, store, precision, target) -> int:
    from nasctl.profiling.tasks import build_lut

    bars: dict[str, Any] = {}

    def progress(stage, done, total):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = progress_bar(total, stage, leave=False, lines=10)
        bar.update(done - bar.n)

    try:
        facts = build_lut(
            space, info, store, precision, args.threads, args.calibration_subnets, args.seed, progress, target
        )
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(facts))
        return 0
    cal = facts["calibration"]
    print(
        f"lookup table of space {space.name!r} at {info.resolution}x{info.resolution} on {target.label} "
        f"({target.runtime_version}), {precision}, {args.threads} thread(s): {facts['entries']} layers "
        f"({facts['measured_now']} measured now, "
        f"{facts['table_seconds']:.0f} s)"
    )
    print(
        f"  predictor: {cal['slope']:.4f} x sum {cal['per_layer']:+.4g} ms x layers "
        f"{cal['intercept']:+.4g} ms, "
        f"fitted on {cal['n']} whole "
        f"subnets "
        f"({facts['calibration_seconds']:.0f} s): {cal['within_10pct']:.0%} within +-10 %, MAPE "
        f"{cal['mape_pct']:.1f} % (in sample)"
    )
    if facts.get("max_drift") is not None:
        print(f"  reference drift during the build: {facts['max_drift']:.1%}")
    print(f"  store: {facts['store']}")
    return 0


def _predict(args, space, info, store, precision, target) -> int:
    from nasctl.profiling.tasks import predict_arch

    out = predict_arch(space, info, args.arch, store, precision, args.threads, args.measure, target)
    if args.json:
        print(json.dumps(out))
        return 0
    line = f"{out['genome']}: predicted {out['predicted_ms']:.4g} ms"
    if out["measured_ms"] is not None:
        line += f", measured {out['measured_ms']:.4g} ms ({out['error_pct']:+.1f} %)"
    print(line + f"  [{target.label}, {target.runtime_version}, {precision}, {args.threads} thread(s)]")
    return 0
