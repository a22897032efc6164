"""Search-space definitions: stages of searchable layers, each choosing a block type and a width.

A space is plain data (a frozen dataclass) loadable from YAML; the built-in ``tam`` (32x32 inputs)
and ``digits`` (8x8 inputs) spaces ship as YAML files next to this module. The width multiplier
scales every channel choice (stem and head included) and is part of the space, so a genome's
channel numbers are the real channel counts of the subnet.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .blocks import BLOCKS, SKIP
from .genome import Genome, GenomeError, LayerGene
from .layers import BNSpec, ConvSpec, out_size

BUILTIN_DIR = Path(__file__).parent


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


def scale_channels(c: int, mult: float) -> int:
    """Channels times the width multiplier, rounded to an even number >= 2 (shuffle needs even)."""
    return max(2, int(round(c * mult / 2.0)) * 2)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stem_stride: int
    stages: tuple[StageSpec, ...]
    blocks: tuple[str, ...]  # allowed block tokens; 'skip' lets non-reducing layers vanish
    head_channels: int
    width_mult: float = 1.0
    layers: tuple[LayerChoices, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        unknown = [b for b in self.blocks if b != SKIP and b not in BLOCKS]
        if unknown:
            raise ValueError(f"space {self.name!r}: unknown block types {unknown}; known: {sorted(BLOCKS)}")
        if self.width_mult <= 0:
            raise ValueError(f"space {self.name!r}: width_mult must be > 0, got {self.width_mult}")
        layers = []
        for stage in self.stages:
            chans = tuple(sorted({scale_channels(w, self.width_mult) for w in stage.widths}))
            for j in range(stage.layers):
                stride = stage.stride if j == 0 else 1
                ops = tuple(b for b in self.blocks if b != SKIP or stride == 1)
                layers.append(LayerChoices(len(layers), stride, ops, chans))
        object.__setattr__(self, "layers", tuple(layers))

    # --- identity and (de)serialisation -----------------------------------------------------
    @property
    def stem(self) -> int:
        return scale_channels(self.stem_channels, self.width_mult)

    @property
    def head(self) -> int:
        return scale_channels(self.head_channels, self.width_mult)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("layers")
        d["stages"] = [dict(s, widths=list(s["widths"])) for s in d["stages"]]
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        allowed = {"name", "stem_channels", "stem_stride", "stages", "blocks", "head_channels", "width_mult"}
        _reject_unknown(d, allowed, "search space")
        stages = []
        for s in d["stages"]:
            _reject_unknown(s, {"layers", "stride", "widths"}, "stage")
            stages.append(StageSpec(int(s["layers"]), int(s["stride"]), tuple(int(w) for w in s["widths"])))
        return cls(name=str(d["name"]), stem_channels=int(d["stem_channels"]),
                   stem_stride=int(d.get("stem_stride", 1)), stages=tuple(stages),
                   blocks=tuple(d["blocks"]), head_channels=int(d["head_channels"]),
                   width_mult=float(d.get("width_mult", 1.0)))

    def with_width(self, width_mult: float) -> "SearchSpace":
        d = self.to_dict()
        d["width_mult"] = width_mult
        return SearchSpace.from_dict(d)

    # --- genomes -----------------------------------------------------------------------------
    def validate(self, genome: Genome) -> Genome:
        """Return ``genome`` if it belongs to this space, else raise GenomeError saying why."""
        if len(genome.layers) != len(self.layers):
            raise GenomeError(f"genome has {len(genome.layers)} layers but space {self.describe()} has "
                              f"{len(self.layers)}: was it searched in another space or width?")
        for gene, lc in zip(genome.layers, self.layers):
            if gene.op not in lc.ops:
                raise GenomeError(f"layer {lc.index} ({gene.encode()!r}): block {gene.op!r} is not allowed "
                                  f"there in space {self.describe()}; allowed: {', '.join(lc.ops)}")
            if gene.op != SKIP and gene.channels not in lc.channels:
                raise GenomeError(f"layer {lc.index} ({gene.encode()!r}): {gene.channels} channels is not a "
                                  f"choice in space {self.describe()}; choices: {list(lc.channels)}")
        return genome

    def parse(self, text: str) -> Genome:
        return self.validate(Genome.decode(text))

    def describe(self) -> str:
        return f"{self.name!r} (width x{self.width_mult:g})"

    def gene_bounds(self) -> list[int]:
        """Number of choices of each integer gene: [ops_0, channels_0, ops_1, channels_1, ...]."""
        out = []
        for lc in self.layers:
            out += [len(lc.ops), len(lc.channels)]
        return out

    def from_vector(self, x) -> Genome:
        genes = []
        for lc in self.layers:
            op = lc.ops[int(x[2 * lc.index])]
            ch = lc.channels[int(x[2 * lc.index + 1])]
            genes.append(LayerGene(op) if op == SKIP else LayerGene(op, ch))
        return Genome(tuple(genes))

    def to_vector(self, genome: Genome) -> np.ndarray:
        self.validate(genome)
        x = []
        for gene, lc in zip(genome.layers, self.layers):
            x.append(lc.ops.index(gene.op))
            x.append(lc.channels.index(gene.channels) if gene.op != SKIP else 0)
        return np.array(x, dtype=int)

    def sample(self, rng: np.random.Generator) -> Genome:
        return self.from_vector([rng.integers(n) for n in self.gene_bounds()])

    def largest(self) -> Genome:
        """Each layer's most expensive block (by parameters at full width) at its widest width."""
        return self._extreme(max)

    def smallest(self) -> Genome:
        """Skip where allowed, else the cheapest block at the narrowest width."""
        return self._extreme(min)

    def _extreme(self, pick) -> Genome:
        genes = []
        cin = self.stem
        for lc in self.layers:
            ch = pick(lc.channels)
            costs = {op: (_op_params(op, cin, ch, lc.stride), op) for op in lc.ops}
            op = pick(costs, key=lambda o: costs[o])
            genes.append(LayerGene(op) if op == SKIP else LayerGene(op, ch))
            cin = cin if op == SKIP else ch
        return Genome(tuple(genes))

    # --- analytic costs ----------------------------------------------------------------------
    def conv_specs(self, genome: Genome, in_channels: int,
                   resolution: int) -> list[tuple[ConvSpec | BNSpec, int]]:
        """Every conv/BN layer of the subnet with its output resolution (head conv included)."""
        self.validate(genome)
        hw = out_size(resolution, self.stem_stride)
        out: list[tuple[ConvSpec | BNSpec, int]] = [
            (ConvSpec(in_channels, self.stem, 3, self.stem_stride), hw), (BNSpec(self.stem), hw)]
        cin = self.stem
        for gene, lc in zip(genome.layers, self.layers):
            if gene.op == SKIP:
                continue
            block = BLOCKS[gene.op](2, 2, lc.stride)  # tiny instance, only for its specs
            hw_out = out_size(hw, lc.stride)
            out += [(spec, hw if at_input else hw_out)
                    for _, spec, at_input in block.specs(cin, gene.channels)]
            hw, cin = hw_out, gene.channels
        out += [(ConvSpec(cin, self.head, 1), hw), (BNSpec(self.head), hw)]
        return out

    def cost(self, genome: Genome, in_channels: int, resolution: int, num_classes: int) -> tuple[int, int]:
        """(parameters, MACs) of the subnet, computed from the genome alone.

        Equals ``sum(p.numel())`` of the extracted model exactly (tested); MACs count conv and
        linear multiply-accumulates at the given input resolution (BatchNorm folded, as deployed).
        """
        params = macs = 0
        for spec, hw in self.conv_specs(genome, in_channels, resolution):
            params += spec.params()
            macs += spec.macs(hw)
        return params + self.head * num_classes + num_classes, macs + self.head * num_classes

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
        weights += self.head * num_classes
        per_channel += num_classes
        return weights + 28 * per_channel + 660 * ops + 1900


def _op_params(op: str, cin: int, cout: int, stride: int) -> int:
    if op == SKIP:
        return 0
    return BLOCKS[op](2, 2, stride).cost(cin, cout, 8)[0]


def _reject_unknown(d: dict, allowed: set[str], what: str) -> None:
    for key in d:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {sorted(allowed)}"
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
    try:
        data = yaml.safe_load(path.read_text())
        space = SearchSpace.from_dict(data)
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"search space file {str(path)!r} is not a valid space definition: {e!r}") from e
    return space.with_width(width_mult) if width_mult is not None else space
