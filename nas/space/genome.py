"""The genome: one subnet of a search space, as a value with an exact string form.

``ir_k3_e6_c24-skip-dsc_k5_c32`` reads layer by layer: a block token and its output channels
(``_c<N>``), or ``skip``. The string is the cache key of the search, the file stem of exports and
what users paste into ``--arch``; ``Genome.decode(g.encode()) == g`` always holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import NasctlError
from .blocks import BLOCKS, SKIP

_LAYER_RE = re.compile(r"^(?P<op>[a-z][a-z0-9_]*?)_c(?P<ch>[1-9][0-9]*)$")


class GenomeError(NasctlError, ValueError):
    """A genome string or value that cannot be parsed or does not belong to a space."""


@dataclass(frozen=True)
class LayerGene:
    """One layer's choice: a registered block token and its output channels (None for skip)."""

    op: str
    channels: int | None = None

    def encode(self) -> str:
        return SKIP if self.op == SKIP else f"{self.op}_c{self.channels}"


@dataclass(frozen=True)
class Genome:
    layers: tuple[LayerGene, ...]

    def encode(self) -> str:
        return "-".join(g.encode() for g in self.layers)

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str) -> "Genome":
        """Parse a genome string; raises :class:`GenomeError` naming the first bad token."""
        if not isinstance(text, str) or not text.strip():
            raise GenomeError("empty genome string: expected tokens like 'ir_k3_e6_c24-skip-dsc_k5_c32'")
        genes = []
        for i, token in enumerate(text.strip().split("-")):
            if token == SKIP:
                genes.append(LayerGene(SKIP))
                continue
            m = _LAYER_RE.match(token)
            if m is None:
                raise GenomeError(
                    f"bad token {token!r} at layer {i} of genome {text!r}: expected '<block>_c<channels>' "
                    f"(channels a positive integer) "
                    f"or 'skip' (blocks: {', '.join(sorted(b for b in BLOCKS))})")
            if m["op"] not in BLOCKS:
                raise GenomeError(
                    f"unknown block {m['op']!r} in token {token!r} at layer {i}: "
                    f"known blocks are {', '.join(sorted(BLOCKS))}")
            genes.append(LayerGene(m["op"], int(m["ch"])))
        return cls(tuple(genes))
