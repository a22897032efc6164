"""One table model and its three writers: plain text (the CLI), Markdown (``summary.md``, the report's
Markdown page) and the cells the report's HTML page escapes itself.

The front of a search run is shown in three places -- the CLI after a search, ``summary.md`` and
``nasctl report`` -- and they must never disagree on a number or a column: each builds its table with
:func:`front_table` (and :func:`finetuned_table`) and only the writer differs. Cells are formatted once
here (:func:`cell`), so a percentage reads ``97.5`` in every one of them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# inline Markdown syntax: code, emphasis, links, tables, strikethrough, escapes; '_' only where it can open
# or close emphasis (inside a word, as in a genome or front_projections.png, it is plain text)
_MD_INLINE = re.compile(r"([\\`*\[\]|~])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# what would start a heading, list, rule or ordered list, and a heading's closing '#'s
_MD_LINE_START = re.compile(r"^(\s*)(?=[#+=-])|^(\s*\d+)(?=[.)])|(?<=\s)(?=#+\s*$)")


def md_escape(text: Any, block: bool = True) -> str:
    """``text`` as literal Markdown: HTML (``<script>``, ``<b>``, entities) and Markdown syntax cannot act.

    Every string the report takes from data -- genomes, folder and class names, config values, a study's
    findings -- passes here: a Markdown renderer would otherwise run the HTML a genome or a hand-edited
    pareto.json carries, or turn ``*`` and ``[..](..)`` into formatting and links. ``<``, ``>`` and ``&``
    become entities, the rest a backslash escape; line breaks become spaces (one block stays one block).
    ``block=False`` (a table cell, never at the start of a line) leaves block syntax (``#``, ``1.``) alone.
    """
    flat = " ".join(str(text).splitlines())
    out = html.escape(flat, quote=False)
    out = _MD_INLINE.sub(lambda m: "\\" + m.group(0), out)
    if not block:
        return out
    return _MD_LINE_START.sub(lambda m: (m.group(1) or m.group(2) or "") + "\\", out)


def cell(v: Any, digits: int = 1) -> str:
    """One value as a table cell: ints with thousands separators, floats to ``digits`` decimals, None
    empty."""
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


@dataclass
class Table:
    """Columns and rows of already formatted cells; ``code`` names the columns shown as code (genomes,
    paths) by the Markdown writer; ``id`` is the HTML table's id."""

    columns: list[str]
    rows: list[list[str]]
    id: str = ""
    code: frozenset[str] = field(default_factory=frozenset)

    def without_empty_columns(self, keep: Sequence[str] = ("#",)) -> Table:
        """The table less the columns no row fills (a run without fine-tuning has no fine-tuned
        columns)."""
        used = [j for j, c in enumerate(self.columns) if c in keep or any(r[j] for r in self.rows)]
        return Table([self.columns[j] for j in used], [[r[j] for j in used] for r in self.rows], self.id,
                     self.code)

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table: text columns left, numeric ones right-aligned."""
        def md(c: str, v: str) -> str:
            return f"`{v}`" if c in self.code and v and "`" not in v else md_escape(v, block=False)

        align = ["---:" if self._numeric(j) else "---" for j in range(len(self.columns))]
        out = ["| " + " | ".join(md_escape(c, False) for c in self.columns) + " |",
               "|" + "|".join(align) + "|"]
        out += ["| " + " | ".join(md(c, v) for c, v in zip(self.columns, r)) + " |" for r in self.rows]
        return "\n".join(out)

    def text(self, last: str | None = None) -> str:
        """A fixed-width plain-text table for a terminal; column ``last`` (a long genome) goes to the end
        unpadded."""
        order = list(range(len(self.columns)))
        if last in self.columns:
            order.remove(self.columns.index(last))
            order.append(self.columns.index(last))
        width = {j: max([len(self.columns[j])] + [len(r[j]) for r in self.rows]) for j in order}

        def line(values: list[str]) -> str:
            parts = []
            for j in order:
                v = values[j]
                if self.columns[j] == last:
                    parts.append(v)
                else:
                    parts.append(v.rjust(width[j]) if self._numeric(j) else v.ljust(width[j]))
            return "  ".join(parts).rstrip()

        return "\n".join([line(self.columns)] + [line(r) for r in self.rows])

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "id": self.id}

    def _numeric(self, j: int) -> bool:
        vals = [r[j] for r in self.rows if r[j]]
        return bool(vals) and all(_NUMBER.fullmatch(v) for v in vals)


_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+\*?( \(over the limit\))?")  # a numeric cell (right-aligned)
FRONT_TABLE_ID = "front"
_ACCURACIES = (("val clean %", "clean_acc"), ("val PGD %", "adv_acc"), ("test clean %", "final_clean_acc"),
               ("test PGD %", "final_adv_acc"), ("fine-tuned clean %", "finetuned_clean_acc"),
               ("fine-tuned PGD %", "finetuned_adv_acc"), ("fine-tuned AA %", "finetuned_aa_acc"))


def front_table(front: list[dict[str, Any]], knee: int | None, latency: bool = False) -> Table:
    """The front as one table: a row per member (the knee marked ``*``), its costs, the latency columns
    when the run has a latency objective (``measured ms`` once the latency check timed the front), and
    inherited and fine-tuned accuracies side by side. Columns no member fills are left out."""
    lat = latency or any("latency_ms" in r for r in front)
    measured = any("measured_latency_ms" in r for r in front)
    cols = (["#", "genome", "params", "int8 KB", "MACs"] + (["latency ms"] if lat else [])
            + (["measured ms"] if measured else []) + [c for c, _ in _ACCURACIES])
    rows = []
    for i, r in enumerate(front):
        kb = r.get("int8_bytes")
        row = [f"{i}{'*' if i == knee else ''}", str(r["genome"]), cell(r.get("params")),
               "" if kb is None else f"{kb / 1024:.1f}", cell(r.get("macs"))]
        if lat:
            row.append(_ms(r.get("latency_ms")))
        if measured:
            row.append(_ms(r.get("measured_latency_ms")) + (" (over the limit)" if r.get("latency_violation")
                                                           else ""))
        rows.append(row + [cell(r.get(k)) for _, k in _ACCURACIES])
    keep = ("#", "genome", "params", "val clean %", "val PGD %")
    return Table(cols, rows, FRONT_TABLE_ID, frozenset({"genome"})).without_empty_columns(keep)


def _ms(v: Any) -> str:
    return "" if v is None else f"{float(v):.4g}"


def finetuned_entries(front: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """``(front index, trade-off, entry)`` of every fine-tuned entry (``finetuned_tradeoffs``), in order."""
    return [(i, name, e) for i, r in enumerate(front)
            for name, e in (r.get("finetuned_tradeoffs") or {}).items()]


def finetuned_table(front: list[dict[str, Any]], knee: int | None) -> Table:
    """Every trade-off entry of every fine-tuned member (the front table shows the first one)."""
    rows = [[f"{i}{'*' if i == knee else ''}", cell(front[i].get("params")), name, cell(e.get("epoch")),
             cell(e.get("clean_acc")), cell(e.get("adv_acc")), cell(e.get("aa_acc")),
             str(e.get("checkpoint", ""))]
            for i, name, e in finetuned_entries(front)]
    return Table(["#", "params", "trade-off", "epoch", "clean %", "PGD %", "AA %", "checkpoint"], rows,
                 "finetuned-entries", frozenset({"checkpoint"}))
