"""The three things ``nasctl profile`` does, as library calls: time a model file, build a device's
lookup table (measure + calibrate), and predict (and optionally measure) one genome's latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nasctl.core import sha256_file
from nasctl.nas.data import DatasetInfo, dataset_info, dataset_names, default_space
from nasctl.nas.space import SearchSpace, is_auto, space_for

from .backends import ProfileSettings, check_threads, measure
from .errors import ProfilingError
from .lut import build_table, calibrate, load_table, lut_settings, measure_genomes
from .result import LatencyResult
from .store import MeasurementStore
from .target import MeasureTarget, check_device_name, resolve_target


def check_device(device: str) -> str:
    """``host`` or ``adb:SERIAL``; anything else is one line naming both."""
    return check_device_name(device)


def resolve_space(space: str, dataset: str | None) -> tuple[SearchSpace, DatasetInfo]:
    """A space and the input shape its models take: ``--dataset``, or the built-in space's own (digits
    spaces: the 8x8 digits; tam: 32x32 CIFAR-10). A YAML space names no input, so it needs ``--dataset``.
    Only the shape is used: no data is loaded."""
    auto = is_auto(space)
    if auto and dataset is None:
        raise ProfilingError("--space auto is built from the input size: add --dataset (the data set its "
                             "supernet trains on, e.g. folder:DIR)")
    try:
        sp = space_for(space, dataset_info(dataset).resolution if auto else 0)
    except ValueError as e:
        raise ProfilingError(str(e)) from e
    if dataset is None:
        if space.endswith((".yaml", ".yml")):
            raise ProfilingError(f"--space {space!r} is a space file, which says nothing about the input: "
                                 f"add "
                                 f"--dataset (the data set its supernet trains on, e.g. digits or cifar10)")
        made_for = [d for d in dataset_names() if default_space(d) == sp.name]
        dataset = made_for[0] if made_for else ("digits" if sp.name.startswith("digits") else "cifar10")
    return sp, dataset_info(dataset)


def profile_file(
    path: str,
    backend: str | None,
    settings: ProfileSettings,
    store: MeasurementStore | None,
    precision: str | None = None,
    target: MeasureTarget | None = None,
) -> LatencyResult:
    """Time one model file on ``backend`` (host) or ``target`` (a phone) and append the result to the
    store (keyed by the file's SHA-256)."""
    if target is not None and target.label != "host":
        result = target.measure([path], settings)[0]
    else:
        result = measure([path], backend, settings)[0]
    if store is not None:
        prec = precision or ("int8" if "int8" in path.rsplit("/", 1)[-1] else "float32")
        store.add("model", sha256_file(path), result, prec)
    return result


def build_lut(
    space: SearchSpace,
    info: DatasetInfo,
    store: MeasurementStore,
    precision: str,
    threads: int = 1,
    calibration_subnets: int = 20,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    target: MeasureTarget | None = None,
) -> dict[str, Any]:
    """Measure the lookup table on ``target`` (default: the host; what the store lacks), then fit the
    predictor on seeded whole models measured on the same target."""
    settings = lut_settings(threads)
    target = target or resolve_target("host", threads)
    check_threads(threads, target.device)  # before the first of hundreds of measurements
    with store.measuring_lock(target.scope(precision)):  # one build per device and store at a time
        return _build_lut(space, info, store, precision, threads, calibration_subnets, seed, progress,
                          target, settings)


def _build_lut(
    space: SearchSpace,
    info: DatasetInfo,
    store: MeasurementStore,
    precision: str,
    threads: int,
    calibration_subnets: int,
    seed: int,
    progress: Callable[[str, int, int], None] | None,
    target: MeasureTarget,
    settings: ProfileSettings,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    table, facts = build_table(
        space,
        info,
        store,
        precision,
        settings,
        target,
        progress=(lambda d, n: progress("layers", d, n)) if progress else None,
    )
    t1 = time.perf_counter()
    if progress:
        progress("calibration", 0, calibration_subnets)
    fit = calibrate(table, store, calibration_subnets, seed, settings, target)
    if progress:
        progress("calibration", calibration_subnets, calibration_subnets)
    return {
        **facts,
        "space": space.name,
        "precision": precision,
        "threads": threads,
        "device": target.label,
        "device_info": target.device.to_dict(),
        "store": str(store.path),
        "calibration": {k: v for k, v in fit.items() if k != "genomes"},
        "table_seconds": t1 - t0,
        "calibration_seconds": time.perf_counter() - t1,
        "seconds": time.perf_counter() - t0,
    }


def predict_arch(
    space: SearchSpace,
    info: DatasetInfo,
    genome_text: str,
    store: MeasurementStore,
    precision: str,
    threads: int = 1,
    measure_too: bool = False,
    target: MeasureTarget | None = None,
) -> dict[str, Any]:
    """The table's prediction for a genome and, with ``measure_too``, the whole model measured."""
    from nasctl.nas.space import GenomeError

    try:
        genome = space.parse(genome_text)
    except (GenomeError, ValueError) as e:
        raise ProfilingError(f"--arch {genome_text!r} is not a genome of space {space.name!r}: {e}") from e
    target = target or resolve_target("host", threads)
    check_threads(threads, target.device)
    scope = target.scope(precision)
    table = load_table(store, space, info, scope, device=target.label)
    out: dict[str, Any] = {
        "genome": genome.encode(),
        "space": space.name,
        "precision": precision,
        "threads": threads,
        "device": target.label,
        "device_fingerprint": scope[0],
        "predicted_ms": table.predict_ms(genome),
        "layers_sum_ms": table.raw_ms(genome),
        "calibrated": bool(table.fit),
        "measured_ms": None,
    }
    if measure_too:
        settings = lut_settings(threads)
        r = measure_genomes(space, info, [genome], store, precision, settings, target, use_cache=False)[0]
        out["measured_ms"] = r.p50_ms
        out["error_pct"] = 100.0 * (out["predicted_ms"] - r.p50_ms) / r.p50_ms
    return out
