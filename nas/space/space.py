"""Search-space definitions: stages of searchable layers, each choosing a block type and a width.

A space is plain data (a frozen dataclass) loadable from YAML; the built-in ``tam`` (32x32 inputs)
and ``digits`` (8x8 inputs) spaces ship as YAML files next to this module. The width multiplier
scales every channel choice (stem and head included) and is part of the space, so a genome's
channel numbers are the real channel counts of the subnet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasctl.core import did_you_mean
from nasctl.errors import NasctlError

from .blocks import BLOCKS, SKIP
from .genome import Genome, GenomeError, LayerGene
from .layers import BNSpec, ConvSpec, out_size

BUILTIN_DIR = Path(__file__).parent
# the largest width multiplier a space takes: 64x the tiny-network spaces is already a supernet of billions of
# parameters (digits: 1.9 G, tam: 4.9 G); beyond it a width is a typo, and channel counts overflow long before
MAX_WIDTH_MULT = 64.0


@dataclass(frozen=True)
class StageSpec:
    layers: int  # searchable layers in this stage
    stride: int  # stride of the stage's first layer (the others use 1)
    widths: tuple[int, ...]  # channel choices before the width multiplier


@dataclass(frozen=True)
class LayerChoices:
    """What one searchable layer may be: its stride, allowed block tokens and channel counts."""

    index: int
    stride: int
    ops: tuple[str, ...]
    channels: tuple[int, ...]


def check_width_mult(mult: object) -> bool:
    """Whether ``mult`` is a width multiplier a space takes: a finite number in (0, MAX_WIDTH_MULT]."""
    return (isinstance(mult, (int, float)) and not isinstance(mult, bool) and math.isfinite(mult)
            and 0 < mult <= MAX_WIDTH_MULT)


def scale_channels(c: int, mult: float) -> int:
    """Channels times the width multiplier, rounded to an even number >= 2 (shuffle needs even)."""
    return max(2, int(round(c * mult / 2.0)) * 2)


def _choices(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


@dataclass(frozen=True)
class SearchSpace:
    """Stages of searchable layers between a stem and a head, as plain data.

    ``stem_channels`` and ``head_channels`` are one number (fixed) or a list (searched: the genome
    then carries ``stem_c<N>`` / ``head_c<N>``); a head width of 0 means no 1x1 head conv (global
    pool straight into the classifier, like the small hand-designed CNNs). ``block_groups``, when
    given, makes the space a union of few-shot sub-spaces: every subnet takes all its blocks from
    one group (plus skip). Why: layers that mix families with unrelated weights did not train
    together, while one group per path trains each group almost as fast as alone
    (``bench/bench_block_mixing.py``, BENCHMARKS.md). Without groups any block may follow any other.
    """

    name: str
    stem_channels: int | tuple[int, ...]
    stem_stride: int
    stages: tuple[StageSpec, ...]
    blocks: tuple[str, ...]  # allowed block tokens; 'skip' lets non-reducing layers vanish
    head_channels: int | tuple[int, ...]
    width_mult: float = 1.0
    block_groups: tuple[tuple[str, ...], ...] = ()  # few-shot groups; () = blocks mix freely
    layers: tuple[LayerChoices, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        unknown = [b for b in self.blocks if b != SKIP and b not in BLOCKS]
        if unknown:
            raise ValueError(f"space {self.name!r}: unknown block types {unknown}; known: {sorted(BLOCKS)}")
        if not check_width_mult(self.width_mult):
            raise ValueError(f"space {self.name!r}: width_mult must be a finite number in "
                             f"(0, {MAX_WIDTH_MULT:g}], got {self.width_mult}")
        stems, heads = _choices(self.stem_channels), _choices(self.head_channels)
        if any(c <= 0 for c in stems) or any(c < 0 for c in heads):
            raise ValueError(f"space {self.name!r}: stem widths must be > 0 and head widths >= 0 (0: no head "
                             f"conv), got {self.stem_channels} and {self.head_channels}")
        self._check_groups()
        layers = []
        for stage in self.stages:
            chans = tuple(sorted({scale_channels(w, self.width_mult) for w in stage.widths}))
            for j in range(stage.layers):
                stride = stage.stride if j == 0 else 1
                ops = tuple(b for b in self.blocks if b != SKIP or stride == 1)
                layers.append(LayerChoices(len(layers), stride, ops, chans))
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "_genes", self._make_genes())  # asked for by every pymoo comparison

    def _check_groups(self) -> None:
        if not self.block_groups:
            return
        grouped = [t for g in self.block_groups for t in g]
        real = [b for b in self.blocks if b != SKIP]
        if SKIP in grouped or len(grouped) != len(set(grouped)) or set(grouped) != set(real):
            raise ValueError(f"space {self.name!r}: block_groups must split the blocks {real} (skip "
                             f"excluded) into disjoint groups, got {[list(g) for g in self.block_groups]}")

    # --- identity and (de)serialisation -----------------------------------------------------
    @property
    def stem_choices(self) -> tuple[int, ...]:
        """Stem widths (after the width multiplier), ascending."""
        return tuple(sorted({scale_channels(c, self.width_mult) for c in _choices(self.stem_channels)}))

    @property
    def head_choices(self) -> tuple[int, ...]:
        """Head conv widths (after the width multiplier), ascending; 0 is 'no head conv'."""
        return tuple(sorted({0 if c == 0 else scale_channels(c, self.width_mult)
                             for c in _choices(self.head_channels)}))

    @property
    def stem(self) -> int:
        """The widest stem (what the supernet stores)."""
        return max(self.stem_choices)

    @property
    def head(self) -> int:
        """The widest head conv (what the supernet stores; 0 if the space has none)."""
        return max(self.head_choices)

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The few-shot groups, or one group of every block when blocks mix freely."""
        return self.block_groups or (tuple(b for b in self.blocks if b != SKIP),)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("layers")
        d["stages"] = [dict(s, widths=list(s["widths"])) for s in d["stages"]]
        d["blocks"] = list(self.blocks)
        for key in ("stem_channels", "head_channels"):
            if isinstance(d[key], (tuple, list)):
                d[key] = list(d[key])
        if self.block_groups:
            d["block_groups"] = [list(g) for g in self.block_groups]
        else:  # spaces without groups keep the dict they always had (checkpoints compare it)
            d.pop("block_groups")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        allowed = {"name", "stem_channels", "stem_stride", "stages", "blocks", "head_channels", "width_mult",
                   "block_groups"}
        _reject_unknown(d, allowed, "search space")
        stages = []
        for s in d["stages"]:
            _reject_unknown(s, {"layers", "stride", "widths"}, "stage")
            stages.append(StageSpec(int(s["layers"]), int(s["stride"]), tuple(int(w) for w in s["widths"])))

        def widths(v):
            return tuple(int(c) for c in v) if isinstance(v, (list, tuple)) else int(v)

        return cls(name=str(d["name"]), stem_channels=widths(d["stem_channels"]),
                   stem_stride=int(d.get("stem_stride", 1)), stages=tuple(stages),
                   blocks=tuple(d["blocks"]), head_channels=widths(d["head_channels"]),
                   width_mult=float(d.get("width_mult", 1.0)),
                   block_groups=tuple(tuple(str(t) for t in g) for g in d.get("block_groups") or ()))

    def with_width(self, width_mult: float) -> "SearchSpace":
        d = self.to_dict()
        d["width_mult"] = width_mult
        return SearchSpace.from_dict(d)

    # --- genomes -----------------------------------------------------------------------------
    def group_of(self, genome: Genome) -> int:
        """Index of the group whose blocks ``genome`` uses (raises GenomeError if it mixes groups)."""
        used = {g.op for g in genome.layers if g.op != SKIP}
        for i, group in enumerate(self.groups):
            if used <= set(group):
                return i
        raise GenomeError(f"genome {genome.encode()!r} mixes blocks of several groups of space "
                          f"{self.describe()}: a subnet takes all its blocks from one of "
                          f"{[list(g) for g in self.groups]} (plus skip)")

    def validate(self, genome: Genome) -> Genome:
        """Return ``genome`` if it belongs to this space, else raise GenomeError saying why."""
        if len(genome.layers) != len(self.layers):
            raise GenomeError(f"genome has {len(genome.layers)} layers but space {self.describe()} has "
                              f"{len(self.layers)}: was it searched in another space or width?")
        for what, value, choices in (("stem", genome.stem, self.stem_choices),
                                     ("head", genome.head, self.head_choices)):
            if len(choices) == 1 and value is not None:
                raise GenomeError(f"genome {genome.encode()!r} states a {what} width, but space "
                                  f"{self.describe()} fixes it at {choices[0]}: leave '{what}_...' out")
            if len(choices) > 1 and value not in choices:
                shown = [f"{what}_none" if c == 0 else f"{what}_c{c}" for c in choices]
                raise GenomeError(f"genome {genome.encode()!r}: space {self.describe()} searches the "
                                  f"{what} width; the genome must say one of {', '.join(shown)}")
        for gene, lc in zip(genome.layers, self.layers):
            if gene.op not in lc.ops:
                raise GenomeError(f"layer {lc.index} ({gene.encode()!r}): block {gene.op!r} is not allowed "
                                  f"there in space {self.describe()}; allowed: {', '.join(lc.ops)}")
            if gene.op != SKIP and gene.channels not in lc.channels:
                raise GenomeError(f"layer {lc.index} ({gene.encode()!r}): {gene.channels} channels is not a "
                                  f"choice in space {self.describe()}; choices: {list(lc.channels)}")
        self.group_of(genome)
        return genome

    def parse(self, text: str) -> Genome:
        return self.validate(Genome.decode(text))

    def describe(self) -> str:
        return f"{self.name!r} (width x{self.width_mult:g})"

    def layer_ops(self, group: int, lc: LayerChoices) -> tuple[str, ...]:
        """The blocks layer ``lc`` may take in a subnet of group ``group``; with several groups, skip
        (where allowed) comes first, so that a layer's block gene means skip in every group."""
        ops = tuple(op for op in lc.ops if op != SKIP and op in self.groups[group])
        if SKIP not in lc.ops:
            return ops
        return (SKIP, *ops) if len(self.groups) > 1 else (*ops, SKIP)

    def _op_at(self, group: int, lc: LayerChoices, index: int) -> str:
        """Block gene ``index`` -> block: skip stays skip, other indices wrap around the group's blocks."""
        ops = self.layer_ops(group, lc)
        if len(self.groups) == 1:
            return ops[index % len(ops)]
        skip = 1 if ops[0] == SKIP else 0
        return SKIP if index < skip else ops[skip + (index - skip) % (len(ops) - skip)]

    def genes(self) -> list[tuple[str, tuple]]:
        """(name, options) of every searchable integer gene, in vector order (see :meth:`_make_genes`)."""
        return list(self._genes)

    def _make_genes(self) -> list[tuple[str, tuple]]:
        """(name, options) of every searchable integer gene, in vector order: the group (when there
        are several), the stem width (when searched), each layer's block and width, the head width
        (when searched). With groups a layer's block gene is an index into its group's choices
        (skip first where allowed, then the group's blocks, wrapping around), so that every vector
        is a valid genome and crossover between groups keeps skips where they were."""
        out: list[tuple[str, tuple]] = []
        if len(self.groups) > 1:
            out.append(("group", tuple(range(len(self.groups)))))
        if len(self.stem_choices) > 1:
            out.append(("stem_ch", self.stem_choices))
        for lc in self.layers:
            if len(self.groups) > 1:
                n = max(len(self.layer_ops(g, lc)) for g in range(len(self.groups)))
                out.append((f"L{lc.index:02d}_op", tuple(range(n))))
            else:
                out.append((f"L{lc.index:02d}_op", lc.ops))
            out.append((f"L{lc.index:02d}_ch", lc.channels))
        if len(self.head_choices) > 1:
            out.append(("head_ch", self.head_choices))
        return out

    def gene_bounds(self) -> list[int]:
        """Number of choices of each integer gene, in the order of :meth:`genes`."""
        return [len(options) for _, options in self.genes()]

    def from_vector(self, x) -> Genome:
        """The genome of a vector of gene indices (see :meth:`genes`); every vector is valid."""
        values = dict(zip([name for name, _ in self.genes()], (int(v) for v in x)))
        group = values.get("group", 0)
        genes = []
        for lc in self.layers:
            op = self._op_at(group, lc, values[f"L{lc.index:02d}_op"])
            ch = lc.channels[values[f"L{lc.index:02d}_ch"]]
            genes.append(LayerGene(op) if op == SKIP else LayerGene(op, ch))
        stem = self.stem_choices[values["stem_ch"]] if "stem_ch" in values else None
        head = self.head_choices[values["head_ch"]] if "head_ch" in values else None
        return Genome(tuple(genes), stem, head)

    def to_vector(self, genome: Genome) -> np.ndarray:
        self.validate(genome)
        group = self.group_of(genome)
        values = {"group": group}
        if genome.stem is not None:
            values["stem_ch"] = self.stem_choices.index(genome.stem)
        if genome.head is not None:
            values["head_ch"] = self.head_choices.index(genome.head)
        for gene, lc in zip(genome.layers, self.layers):
            values[f"L{lc.index:02d}_op"] = self.layer_ops(group, lc).index(gene.op)
            values[f"L{lc.index:02d}_ch"] = lc.channels.index(gene.channels) if gene.op != SKIP else 0
        return np.array([values[name] for name, _ in self.genes()], dtype=int)

    def sample(self, rng: np.random.Generator) -> Genome:
        """A uniformly random subnet: a group (uniform), then every gene uniform over that group's
        real choices (no modulo bias); without groups or stem/head genes the draws are those of
        the spaces that had none, so such runs keep their random streams."""
        group = int(rng.integers(len(self.groups))) if len(self.groups) > 1 else 0
        real = {f"L{lc.index:02d}_op": len(self.layer_ops(group, lc)) for lc in self.layers}
        x = [group if name == "group" else int(rng.integers(real.get(name, len(options))))
             for name, options in self.genes()]
        return self.from_vector(x)

    def largest(self) -> Genome:
        """The group whose most expensive subnet (each layer's most expensive block, by parameters
        at full width, at its widest width; widest stem and head) is the largest: that subnet."""
        return self._extreme(max)

    def smallest(self) -> Genome:
        """Skip where allowed, else the cheapest block at the narrowest width; narrowest stem and
        head; of the groups, the one whose subnet is the smallest."""
        return self._extreme(min)

    def _extreme(self, pick) -> Genome:
        candidates = []
        for group in range(len(self.groups)):
            stem = pick(self.stem_choices)
            genes = []
            cin = stem
            for lc in self.layers:
                ch = pick(lc.channels)
                ops = self.layer_ops(group, lc)
                costs = {op: (_op_params(op, cin, ch, lc.stride), op) for op in ops}
                op = pick(costs, key=lambda o: costs[o])
                genes.append(LayerGene(op) if op == SKIP else LayerGene(op, ch))
                cin = cin if op == SKIP else ch
            g = Genome(tuple(genes), stem if len(self.stem_choices) > 1 else None,
                       pick(self.head_choices) if len(self.head_choices) > 1 else None)
            candidates.append((self.cost(g, 1, 8, 10)[0], group, g))
        return pick(candidates, key=lambda c: (c[0], c[1]))[2]

    # --- analytic costs ----------------------------------------------------------------------
    def stem_of(self, genome: Genome) -> int:
        return self.stem if genome.stem is None else genome.stem

    def head_of(self, genome: Genome) -> int:
        """The genome's head conv width (0: no head conv)."""
        return self.head if genome.head is None else genome.head

    def conv_specs(self, genome: Genome, in_channels: int,
                   resolution: int) -> list[tuple[ConvSpec | BNSpec, int]]:
        """Every conv/BN layer of the subnet with its output resolution (head conv included)."""
        self.validate(genome)
        hw = out_size(resolution, self.stem_stride)
        stem = self.stem_of(genome)
        out: list[tuple[ConvSpec | BNSpec, int]] = [
            (ConvSpec(in_channels, stem, 3, self.stem_stride), hw), (BNSpec(stem), hw)]
        cin = stem
        for gene, lc in zip(genome.layers, self.layers):
            if gene.op == SKIP:
                continue
            block = BLOCKS[gene.op](2, 2, lc.stride)  # tiny instance, only for its specs
            hw_out = out_size(hw, lc.stride)
            out += [(spec, hw if at_input else hw_out)
                    for _, spec, at_input in block.specs(cin, gene.channels)]
            hw, cin = hw_out, gene.channels
        head = self.head_of(genome)
        if head:
            out += [(ConvSpec(cin, head, 1), hw), (BNSpec(head), hw)]
        return out

    def classifier_in(self, genome: Genome) -> int:
        """Input features of the classifier: the head width, or the last block's width without one."""
        head = self.head_of(genome)
        if head:
            return head
        cin = self.stem_of(genome)
        for gene in genome.layers:
            cin = cin if gene.op == SKIP else gene.channels
        return cin

    def cost(self, genome: Genome, in_channels: int, resolution: int, num_classes: int) -> tuple[int, int]:
        """(parameters, MACs) of the subnet, computed from the genome alone.

        Equals ``sum(p.numel())`` of the extracted model exactly (tested); MACs count conv and
        linear multiply-accumulates at the given input resolution (BatchNorm folded, as deployed).
        """
        params = macs = 0
        for spec, hw in self.conv_specs(genome, in_channels, resolution):
            params += spec.params()
            macs += spec.macs(hw)
        fc = self.classifier_in(genome)
        return params + fc * num_classes + num_classes, macs + fc * num_classes

    def int8_bytes(self, genome: Genome, in_channels: int, resolution: int, num_classes: int) -> int:
        """Estimated size in bytes of the full-int8 TFLite file that ``nasctl export`` writes.

        One byte per weight, plus per output channel (folded int32 bias, float scale, int64 zero
        point and activation parameters) about 28 B, per operator about 660 B of tensors and
        tables, and about 1.9 KB fixed: constants fitted by least squares to four real exports of
        digits subnets (5.9 K - 49 K params, 19.5 - 96.6 KB), which it matches within 1 % (in sample,
        BENCHMARKS.md). A search objective, not a promise: measure with ``nasctl export``."""
        weights = per_channel = ops = 0
        for spec, _ in self.conv_specs(genome, in_channels, resolution):
            if isinstance(spec, ConvSpec):
                weights += spec.params()
                per_channel += spec.out_ch
                ops += 1
        weights += self.classifier_in(genome) * num_classes
        per_channel += num_classes
        return weights + 28 * per_channel + 660 * ops + 1900


def _op_params(op: str, cin: int, cout: int, stride: int) -> int:
    if op == SKIP:
        return 0
    return BLOCKS[op](2, 2, stride).cost(cin, cout, 8)[0]


def _reject_unknown(d: dict, allowed: set[str], what: str) -> None:
    for key in d:
        if key not in allowed:
            extra = did_you_mean(key, sorted(allowed)) or f"; allowed: {sorted(allowed)}"
            raise ValueError(f"unknown key {key!r} in {what}{extra}")


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_space(name_or_path: str, width_mult: float | None = None) -> SearchSpace:
    """A built-in space by name (``tam``, ``digits``) or a YAML file; optionally re-widened."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown search space {name_or_path!r}: built-in spaces are "
                             f"{', '.join(builtin_spaces())}, or give a path to a YAML file")
    elif not path.exists():
        raise ValueError(f"search space file {str(path)!r} does not exist")
    from nasctl.yaml_strict import DuplicateKeyError, load_strict

    try:
        data = load_strict(path.read_text())
        space = SearchSpace.from_dict(data)
    except DuplicateKeyError as e:
        raise ValueError(f"search space file {str(path)!r} sets {e.key!r} twice in one mapping, at line "
                         f"{e.first} and again at line {e.line} (YAML would silently keep the later): keep "
                         f"one of them") from e
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"search space file {str(path)!r} is not a valid space definition: {e!r}") from e
    return space.with_width(width_mult) if width_mult is not None else space


def check_width(width_mult: object, flag: str = "--width-mult") -> None:
    """A width multiplier is a finite number in (0, MAX_WIDTH_MULT] (inf would overflow the channel counts,
    nan compare false everywhere): one line naming ``flag`` otherwise. None: the caller's default."""
    if width_mult is not None and not check_width_mult(width_mult):
        raise NasctlError(f"{flag} must be a finite number in (0, {MAX_WIDTH_MULT:g}] (it multiplies every "
                          f"channel choice; 1 is the space as written), got {width_mult!r}: give e.g. 0.5, 1 "
                          f"or 2")
