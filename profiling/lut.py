"""Per-device latency lookup tables and the calibrated whole-model predictor.

A subnet is a stem, its non-skip blocks and a head; its latency is predicted as
``slope * sum(entry latencies) + per_layer * n_entries + intercept``, where each entry is the
measured median of a
single-layer model (the stem with the input normalisation, one block at its input resolution and
channel counts, or the head with pooling and classifier) converted and timed exactly like whole
models, and the three constants are fitted by least squares to whole-model measurements of a
seeded sample of subnets: ``per_layer`` takes back the per-invocation overhead that every
single-layer model paid once and a whole model pays once in total, ``slope`` the cache effects
between layers.

Entries are keyed by what determines their cost (block, channels, stride, input resolution), not by
the space, so spaces that share layers share measurements; everything lives in the
:class:`MeasurementStore` under one :class:`Scope`. Latency needs no trained weights: every model
here is randomly initialised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from nasctl.nas.data import DatasetInfo
from nasctl.nas.space import SKIP, Genome, SearchSpace

from .backends import ProfileSettings
from .convert import ToConvert, convert_modules
from .errors import ProfilingError
from .result import LatencyResult
from .store import MeasurementStore, Scope
from .target import MeasureTarget, resolve_target

log = logging.getLogger(__name__)

LUT_SETTINGS = ProfileSettings(
    threads=1, runs=30, warmup=5, min_seconds=0.1, max_runs=2000, reference_every=25
)
BATCH = 40  # entries converted, then timed, then stored together: the unit of resuming


@dataclass(frozen=True, order=True)
class LutEntry:
    """One single-layer model of a table: a stem, a block or a head at its input resolution."""

    kind: str  # "stem" | "block" | "head"
    op: str  # block token; "stem" / "head" for those
    cin: int
    cout: int  # stem / block output channels; head conv width (0: pooling straight to the classifier)
    stride: int
    hw: int  # input resolution (square)
    classes: int = 0  # head only

    @property
    def key(self) -> str:
        extra = f"|k{self.classes}" if self.kind == "head" else ""
        return f"{self.kind}:{self.op}|c{self.cin}>{self.cout}|s{self.stride}|hw{self.hw}{extra}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.cin, self.hw, self.hw)

    def build(self, info: DatasetInfo) -> nn.Module:
        from nasctl.nas.space.blocks import build_block, to_static
        from nasctl.nas.supernet import Head, Normalize, Stem

        if self.kind == "stem":
            stem = Stem(self.cin, self.cout, self.stride)
            stem.set_active(self.cout)
            return to_static(nn.Sequential(Normalize(info.mean, info.std), stem))
        if self.kind == "head":
            head = Head(self.cin, [self.cout], self.classes)
            head.set_active(self.cin, self.cout)
            head.drop_inactive()
            return to_static(head)
        block = build_block(self.op, self.cin, self.cout, self.stride)
        block.set_active(self.cin, self.cout, self.op)
        block.drop_inactive()
        return to_static(nn.Sequential(block))


def _out(hw: int, stride: int) -> int:
    from nasctl.nas.space.layers import out_size

    return out_size(hw, stride)


def genome_entries(space: SearchSpace, genome: Genome, info: DatasetInfo) -> list[LutEntry]:
    """The entries whose latencies add up to ``genome``'s (skips cost nothing: they are not there)."""
    space.validate(genome)
    stem = space.stem_of(genome)
    out = [LutEntry("stem", "stem", info.in_channels, stem, space.stem_stride, info.resolution)]
    hw, cin = _out(info.resolution, space.stem_stride), stem
    for gene, lc in zip(genome.layers, space.layers):
        if gene.op == SKIP:
            continue
        out.append(LutEntry("block", gene.op, cin, gene.channels, lc.stride, hw))
        hw, cin = _out(hw, lc.stride), gene.channels
    out.append(LutEntry("head", "head", cin, space.head_of(genome), 1, hw, info.num_classes))
    return out


def space_entries(space: SearchSpace, info: DatasetInfo) -> list[LutEntry]:
    """Every entry any subnet of ``space`` can use: each block at each layer position, for every input
    width that can reach that layer (skips let earlier widths through) and every output width."""
    entries: set[LutEntry] = {
        LutEntry("stem", "stem", info.in_channels, s, space.stem_stride, info.resolution)
        for s in space.stem_choices
    }
    hw = _out(info.resolution, space.stem_stride)
    cins = set(space.stem_choices)
    for lc in space.layers:
        for op in lc.ops:
            if op == SKIP:
                continue
            entries |= {LutEntry("block", op, ci, co, lc.stride, hw) for ci in cins for co in lc.channels}
        cins = set(lc.channels) | (cins if SKIP in lc.ops else set())
        hw = _out(hw, lc.stride)
    entries |= {
        LutEntry("head", "head", ci, h, 1, hw, info.num_classes) for ci in cins for h in space.head_choices
    }
    return sorted(entries)


def space_id(space: SearchSpace, info: DatasetInfo) -> str:
    """Names a space at an input shape: calibrations and whole-model measurements are kept per space."""
    blob = json.dumps(
        {"space": space.to_dict(), "input": [info.in_channels, info.resolution, info.num_classes]},
        sort_keys=True,
    )
    return f"{space.name}@{info.resolution}px:{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def host_scope(precision: str, threads: int = 1) -> Scope:
    """The host LiteRT scope (what ``lut:host`` reads): the host target's own."""
    return resolve_target("host", threads).scope(precision)


def lut_settings(threads: int = 1) -> ProfileSettings:
    """The timing settings of tables and calibrations, at ``threads`` threads."""
    return dataclasses.replace(LUT_SETTINGS, threads=threads)


# --- the table -----------------------------------------------------------------------------
@dataclass
class LatencyTable:
    """A device's table for one space: entry medians (ms) and, once calibrated, the linear fit."""

    scope: Scope
    space: SearchSpace
    info: DatasetInfo
    entries: dict[str, float]
    fit: dict[str, Any] | None = None
    device: str = "host"  # how the user names the device (for messages)

    def sum_and_count(self, genome: Genome) -> tuple[float, int]:
        """The plain sum of the genome's entries and how many there are (the predictor's features)."""
        keys = [e.key for e in genome_entries(self.space, genome, self.info)]
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise ProfilingError(
                f"the lookup table lacks {len(missing)} of this subnet's layers (e.g. {missing[0]}): "
                f"{build_hint(self.space, self.scope, self.info, self.device)}"
            )
        return float(sum(self.entries[k] for k in keys)), len(keys)

    def raw_ms(self, genome: Genome) -> float:
        """The plain sum of the genome's entries."""
        return self.sum_and_count(genome)[0]

    def predict_ms(self, genome: Genome) -> float:
        """Predicted whole-model latency (calibrated; the plain sum where no calibration exists)."""
        raw, n = self.sum_and_count(genome)
        if not self.fit:
            return raw
        return float(self.fit["slope"] * raw + self.fit.get("per_layer", 0.0) * n + self.fit["intercept"])


def build_hint(
    space: SearchSpace, scope: Scope, info: DatasetInfo | None = None, device: str = "host"
) -> str:
    """The command that builds the missing table (a space from a file is named by its file)."""
    from nasctl.nas.space import builtin_spaces, load_space

    builtin = space.name in builtin_spaces() and load_space(space.name).to_dict() == space.to_dict()
    where = space.name if builtin else f"YOUR_SPACE.yaml (the file of space {space.name!r})"
    int8 = " --int8" if scope[3] == "int8" else ""
    threads = f" --threads {scope[4]}" if scope[4] != 1 else ""
    data = f" --dataset {info.name}" if info is not None else ""
    return f"build it with: nasctl profile --build-lut --space {where}{data} --device {device}{int8}{threads}"


def load_table(
    store: MeasurementStore,
    space: SearchSpace,
    info: DatasetInfo,
    scope: Scope,
    require_complete: bool = True,
    device: str = "host",
) -> LatencyTable:
    """The stored table of ``space`` under ``scope``; one clear error when it is missing or partial."""
    wanted = [e.key for e in space_entries(space, info)]
    found = {k: r.p50_ms for k, r in store.latest(scope, "block").items()}
    entries = {k: found[k] for k in wanted if k in found}
    if require_complete and len(entries) < len(wanted):
        what = (
            "no lookup table"
            if not entries
            else f"a partial lookup table ({len(entries)}/{len(wanted)} layers)"
        )
        raise ProfilingError(
            f"the store {str(store.path)!r} has {what} for space {space.name!r} on "
            f"{scope.describe()}: {build_hint(space, scope, info, device)}"
        )
    fit = store.latest_calibration(scope, space_id(space, info))
    return LatencyTable(scope, space, info, entries, fit, device)


def build_table(
    space: SearchSpace,
    info: DatasetInfo,
    store: MeasurementStore,
    precision: str,
    settings: ProfileSettings = LUT_SETTINGS,
    target: MeasureTarget | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[LatencyTable, dict[str, Any]]:
    """Measure every entry of ``space`` missing from the store on ``target`` (default: the host's
    LiteRT; resumable: batches already stored are not measured again) and return the table with facts
    for the report."""
    target = target or resolve_target("host", settings.threads)
    scope = target.scope(precision)
    entries = space_entries(space, info)
    have = store.latest(scope, "block", [e.key for e in entries])
    todo = [e for e in entries if e.key not in have]
    done = len(entries) - len(todo)
    if progress:
        progress(done, len(entries))
    drifts: list[float] = []
    for i in range(0, len(todo), BATCH):
        batch = todo[i : i + BATCH]
        results = measure_modules(
            [(e.key, lambda e=e: e.build(info), e.input_shape) for e in batch], precision, settings, target
        )
        drifts += [r.drift for r in results[:1] if r.drift is not None]
        store.add_missing("block", [(e.key, r) for e, r in zip(batch, results)], precision)
        done += len(batch)
        if progress:
            progress(done, len(entries))
    table = load_table(store, space, info, scope, device=target.label)
    return table, {
        "entries": len(entries),
        "measured_now": len(todo),
        "max_drift": max(drifts, default=None),
        "scope": list(scope),
    }


def measure_modules(
    items: Sequence[tuple[str, Callable[[], nn.Module], tuple[int, ...]]],
    precision: str,
    settings: ProfileSettings,
    target: MeasureTarget | None = None,
) -> list[LatencyResult]:
    """Convert ``(name, build, input_shape)`` modules to TFLite at ``precision`` and time them on
    ``target`` (default: the host's LiteRT, one fresh worker process per batch); one result per item."""
    target = target or resolve_target("host", settings.threads)
    with tempfile.TemporaryDirectory(prefix="nasctl-profile-") as tmp:
        names = [f"m{i:04d}" for i in range(len(items))]
        files = convert_modules(
            [ToConvert(n, build, tuple(shape)) for n, (_, build, shape) in zip(names, items)], tmp, precision
        )
        return target.measure([str(files[n]) for n in names], settings)


# --- whole models and calibration ------------------------------------------------------------
def genome_key(space: SearchSpace, info: DatasetInfo, genome: Genome) -> str:
    return f"{space_id(space, info)}|{genome.encode()}"


def measure_genomes(
    space: SearchSpace,
    info: DatasetInfo,
    genomes: Sequence[Genome],
    store: MeasurementStore,
    precision: str,
    settings: ProfileSettings = LUT_SETTINGS,
    target: MeasureTarget | None = None,
    use_cache: bool = True,
) -> list[LatencyResult]:
    """Whole-model latency of each genome on ``target`` (default: the host's LiteRT; randomly
    initialised, converted like the table's entries), cached in the store by genome: a genome measured
    before is not converted again."""
    from nasctl.nas.supernet import build_subnet

    target = target or resolve_target("host", settings.threads)
    scope = target.scope(precision)
    keys = [genome_key(space, info, g) for g in genomes]
    cached = store.latest(scope, "genome", keys) if use_cache else {}
    todo = [(k, g) for k, g in zip(keys, genomes) if k not in cached]
    shape = (1, info.in_channels, info.resolution, info.resolution)
    for i in range(0, len(todo), BATCH):
        batch = todo[i : i + BATCH]
        items = [
            (
                k,
                lambda g=g: build_subnet(space, g, info.in_channels, info.num_classes, info.mean, info.std),
                shape,
            )
            for k, g in batch
        ]
        results = measure_modules(items, precision, settings, target)
        rows = [(k, r) for (k, _), r in zip(batch, results)]
        if use_cache:  # a cached genome is measured once per scope
            store.add_missing("genome", rows, precision)
        else:  # measured again on purpose (--arch --measure): one more row
            store.add_many("genome", rows, precision)
        cached.update({k: r for (k, _), r in zip(batch, results)})
    return [cached[k] for k in keys]


def fit_calibration(
    raw_ms: Sequence[float], n_layers: Sequence[int], measured_ms: Sequence[float]
) -> dict[str, Any]:
    """``measured = slope * raw + per_layer * n_layers + intercept`` by least squares on *relative*
    errors, and its in-sample error.

    Why relative: the goal is a small percentage error at every size; plain least squares let the
    largest subnets (10-50x slower) set the line and put the smallest 50 % low (host tam table: 60 %
    of 30 held-out subnets within +-10 % against 100 %). Why a per-layer term: each entry was timed
    as a model of its own and carries one invocation's overhead, which a whole model pays once; on
    the digits tables (2-60 us) it took the held-out share within +-10 % from 80-87 % to 100 %."""
    x, n, y = np.asarray(raw_ms, float), np.asarray(n_layers, float), np.asarray(measured_ms, float)
    if len(x) < 2:
        raise ProfilingError("calibration needs at least two measured subnets")
    features = np.c_[x, n, np.ones_like(x)] if len(set(n)) > 1 and len(x) >= 4 else np.c_[x, np.ones_like(x)]
    w = 1.0 / y
    coef = np.linalg.lstsq(features * w[:, None], y * w, rcond=None)[0]
    slope, intercept = float(coef[0]), float(coef[-1])
    per_layer = float(coef[1]) if features.shape[1] == 3 else 0.0
    return {
        "slope": slope,
        "per_layer": per_layer,
        "intercept": intercept,
        "n": int(len(x)),
        **accuracy(slope * x + per_layer * n + intercept, y),
    }


def accuracy(
    predicted_ms: Sequence[float], measured_ms: Sequence[float], tolerance: float = 0.10
) -> dict[str, float]:
    """Share of predictions within ``tolerance`` of the measurement and the mean absolute % error."""
    p, m = np.asarray(predicted_ms, float), np.asarray(measured_ms, float)
    rel = np.abs(p - m) / m
    return {"within_10pct": float(np.mean(rel <= tolerance)), "mape_pct": float(100 * rel.mean())}


def calibrate(
    table: LatencyTable,
    store: MeasurementStore,
    n: int = 20,
    seed: int = 0,
    settings: ProfileSettings = LUT_SETTINGS,
    target: MeasureTarget | None = None,
) -> dict[str, Any]:
    """Fit the table's slope and intercept on ``n`` seeded random subnets measured whole (on the
    table's own target), and store it."""
    genomes = sample_genomes(table.space, n, seed)
    measured = measure_genomes(table.space, table.info, genomes, store, table.scope[3], settings, target)
    raw, layers = zip(*(table.sum_and_count(g) for g in genomes))
    fit = fit_calibration(raw, layers, [r.p50_ms for r in measured])
    fit["genomes"] = [g.encode() for g in genomes]
    fit["seed"] = seed
    store.add_calibration(table.scope, space_id(table.space, table.info), fit)
    table.fit = fit
    return fit


def sample_genomes(space: SearchSpace, n: int, seed: int) -> list[Genome]:
    """``n`` distinct seeded random subnets, the smallest and largest among them (the range's ends)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Genome] = {}
    for g in (space.smallest(), space.largest()):
        out.setdefault(g.encode(), g)
    tries = 0
    while len(out) < n and tries < 100 * n:
        g = space.sample(rng)
        out.setdefault(g.encode(), g)
        tries += 1
    return list(out.values())[:n]
