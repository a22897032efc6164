"""The genome: one subnet of a search space, as a value with an exact string form.

``stem_c16-ir_k3_e6_c24-skip-conv_k3_c32-head_none`` reads left to right: the stem width (only in
spaces where it is searched), then layer by layer a block token and its output channels
(``_c<N>``) or ``skip``, then the head (only where it is searched): ``head_c<N>`` is a 1x1 conv to
N channels before global pooling, ``head_none`` pools the last block straight into the classifier.
The string is the cache key of the search, the file stem of exports and what users paste into
``--arch``; ``Genome.decode(g.encode()) == g`` always holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nasctl.errors import NasctlError

from .blocks import BLOCKS, SKIP

_LAYER_RE = re.compile(r"^(?P<op>[a-z][a-z0-9_]*?)_c(?P<ch>[1-9][0-9]*)$")
_STEM_RE = re.compile(r"^stem_c(?P<ch>[1-9][0-9]*)$")
_HEAD_RE = re.compile(r"^head_(?:c(?P<ch>[1-9][0-9]*)|none)$")
NO_HEAD = 0  # Genome.head value of 'head_none': no 1x1 head conv


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
    """Layer genes, plus the stem width and head width (0: no head conv) where the space searches
    them; ``None`` where the space fixes them (they are then left out of the string)."""

    layers: tuple[LayerGene, ...]
    stem: int | None = None
    head: int | None = None

    def encode(self) -> str:
        parts = [] if self.stem is None else [f"stem_c{self.stem}"]
        parts += [g.encode() for g in self.layers]
        if self.head is not None:
            parts.append("head_none" if self.head == NO_HEAD else f"head_c{self.head}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str) -> "Genome":
        """Parse a genome string; raises :class:`GenomeError` naming the first bad token."""
        if not isinstance(text, str) or not text.strip():
            raise GenomeError("empty genome string: expected tokens like 'ir_k3_e6_c24-skip-dsc_k5_c32'")
        tokens = text.strip().split("-")
        stem = head = None
        if (m := _STEM_RE.match(tokens[0])) is not None:
            stem, tokens = int(m["ch"]), tokens[1:]
        if tokens and (m := _HEAD_RE.match(tokens[-1])) is not None:
            head, tokens = (int(m["ch"]) if m["ch"] else NO_HEAD), tokens[:-1]
        offset = 0 if stem is None else 1
        genes = []
        for i, token in enumerate(tokens):
            if token == SKIP:
                genes.append(LayerGene(SKIP))
                continue
            if token.startswith(("stem_", "head_")):
                where = "first" if token.startswith("stem_") else "last"
                raise GenomeError(f"bad token {token!r} at position {i + offset} of genome {text!r}: "
                                  f"'{token.split('_')[0]}_c<N>' may only come {where}")
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
        if not genes:
            raise GenomeError(f"genome {text!r} has no layers")
        return cls(tuple(genes), stem, head)
