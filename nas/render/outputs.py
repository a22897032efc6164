"""What a search leaves behind for people: the front, its plots, layer statistics and a summary.

The layer-wise statistics of the first front (how often each block type and width appears at each
layer) are TAM-NAS's design guideline for robust tiny networks; they go to ``layer_stats.csv`` and
a heat map. Plots are plain matplotlib Figures rendered to PNG: no display, no pyplot state.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.core import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text

from ..attacks.autoattack import pgd_overstates
from ..search.front import knee_index
from ..search.objectives import OBJECTIVES
from ..space import SKIP, Genome, SearchSpace
from .tables import finetuned_entries, finetuned_table, front_table, md_escape


# inline Markdown syntax: code, emphasis, links, tables, strikethrough, escapes; '_' only where it can open
# or close emphasis (inside a word, as in a genome or front_projections.png, it is plain text)
def layer_stats(space: SearchSpace,
                front: list[dict[str, Any]]) -> tuple[list[str], list[list[int]], list[str],
                                                      list[list[int]]]:
    """Counts over the front: (block names, layer x block counts, width labels, layer x width counts)."""
    ops = sorted({op for lc in space.layers for op in lc.ops}, key=lambda o: (o == SKIP, o))
    widths = sorted({c for lc in space.layers for c in lc.channels})
    op_counts = [[0] * len(ops) for _ in space.layers]
    ch_counts = [[0] * len(widths) for _ in space.layers]
    for rec in front:
        for i, gene in enumerate(Genome.decode(rec["genome"]).layers):
            op_counts[i][ops.index(gene.op)] += 1
            if gene.op != SKIP:
                ch_counts[i][widths.index(gene.channels)] += 1
    return ops, op_counts, [str(w) for w in widths], ch_counts


def layer_stats_csv(space: SearchSpace, front: list[dict[str, Any]]) -> str:
    ops, op_counts, widths, ch_counts = layer_stats(space, front)
    header = ["layer", "stride", *[f"block:{o}" for o in ops], *[f"width:{c}" for c in widths]]
    rows = [[lc.index, lc.stride, *oc, *cc] for lc, oc, cc in zip(space.layers, op_counts, ch_counts)]
    return csv_text([header, *rows])


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _figure(**kwargs):
    """A matplotlib Figure that belongs to no pyplot state: no backend is switched (a notebook user's
    stays as it is) and nothing has to be closed (matplotlib's documented way for servers)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_projections(path: Path, archive: list[dict[str, Any]], front: list[dict[str, Any]],
                     objectives: tuple[str, ...]) -> None:
    """2-D projections of the front over every evaluated candidate, one panel per objective pair."""
    pairs = list(itertools.combinations(objectives, 2))
    fig = _figure(figsize=(4.6 * len(pairs), 4))
    axes = fig.subplots(1, len(pairs), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        ax.scatter([r[a] for r in archive], [r[b] for r in archive], s=10, c="0.75", label="evaluated")
        ax.scatter([r[a] for r in front], [r[b] for r in front], s=24, c="C3", label="Pareto front")
        ax.set_xlabel(f"{OBJECTIVES[a].label} ({a})")
        ax.set_ylabel(f"{OBJECTIVES[b].label} ({b})")
        for o, setter in ((a, ax.set_xscale), (b, ax.set_yscale)):
            if not OBJECTIVES[o].maximize:
                setter("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{len(front)} non-dominated of {len(archive)} evaluated subnets")
    _save(fig, path)


def plot_hypervolume(path: Path, history: list[dict[str, Any]], label: str) -> None:
    fig = _figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot([h["generation"] for h in history], [h["hypervolume"] for h in history], marker="o")
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume")
    ax.set_title(label)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_layer_heatmap(path: Path, space: SearchSpace, front: list[dict[str, Any]]) -> None:
    ops, op_counts, widths, ch_counts = layer_stats(space, front)
    fig = _figure(figsize=(4 + 0.5 * (len(ops) + len(widths)), 0.5 * len(space.layers) + 2))
    a1, a2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(ops), max(len(widths), 1)]})
    for ax, counts, labels, title in ((a1, op_counts, ops, "block type"), (a2, ch_counts, widths, "width")):
        m = np.array(counts)
        ax.imshow(m, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(space.layers)), [f"L{lc.index} s{lc.stride}" for lc in space.layers],
                      fontsize=8)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", color="w", fontsize=7)
        ax.set_title(f"{title} per layer on the first front")
    _save(fig, path)


def summary_markdown(meta: dict[str, Any], front: list[dict[str, Any]], knee: int,
                     history: list[dict[str, Any]]) -> str:
    objs = meta["objectives"]
    final = meta.get("final_attack") or {}
    lines = [
        f"# nasctl search: {md_escape(meta['run'])}",
        "",
        f"- data set: **{md_escape(meta['dataset'])}**"
        + (f" (supernet trained on a class-balanced subset of {meta['train_subset']:,} training images)"
           if meta.get("train_subset") else "") + f"; supernet: `{meta['supernet']}`",
        f"- threat model: L-inf, eps = {meta['eps']:.4g} on [0,1] pixels",
        f"- search: {meta['algorithm']}, population {meta['pop_size']}, {meta['generations']} generations"
        + (f" (mutation: {meta['mutation_genes']:g} genes per offspring)"
           if meta["algorithm"] == "nsga2" else "")
        + f", {meta['evaluations']} distinct subnets evaluated, seed {meta['seed']}",
        f"- objectives: {', '.join(objs)}; search-time attack: PGD-{meta['search_attack']['steps']} on "
        f"{meta['val_images']} validation images (never the test split)",
        f"- final evaluation: PGD-{final.get('steps')} x {final.get('restarts')} restarts on the test split "
        f"({meta.get('final_images')} images)",
        f"- hypervolume (reference point {meta['reference_point']} in each minimised objective): "
        f"{history[-1]['hypervolume']:.4f} after generation {history[-1]['generation']}" if history else "",
        f"- wall time: {meta['seconds']:.0f} s"
        + (" (" + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in meta["stage_seconds"].items())
           + ")" if meta.get("stage_seconds") else ""),
        "",
        f"## Pareto front ({len(front)} subnets, knee marked *)",
        "",
        "Test columns: inherited weights (BN recalibrated) and, for the members of the fine-tune stage, the "
        "same network trained on its own (fine-tuned); the same attack on the same test images.",
        "",
    ]
    lat = meta.get("latency")
    if lat:
        lines[2:2] = [f"- latency_ms: {lat['source']} (LiteRT {lat['precision']}, "
                      f"{lat['threads']} thread(s), "
                      f"{lat['runtime_version']}, device {lat['device_fingerprint']})"]
    check = meta.get("latency_check")
    if check:
        lines.insert(3, "- " + latency_check_line(check))
    lines.append(front_table(front, knee, bool(lat)).markdown())
    lines += finetune_lines(meta, front, knee)
    if not front:
        limits = meta.get("constraints") or {}
        flags = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in limits.items())
        lines += ["", f"**No subnet met the constraints ({flags}).** Nothing to export; every evaluated "
                  "candidate is in `archive.jsonl`." if limits else "**The front is empty.**"]
    plots = ["`front_projections.png`", "`layer_heatmap.png`"] if front else []
    plots += ["`hypervolume.png`"] if history else []
    lines += ["", "Files: `pareto.json` (front), `archive.jsonl` (every evaluated subnet), "
              "`history.json` (hypervolume per generation), " + "".join(p + ", " for p in plots)
              + "`layer_stats.csv`, `config.json` (settings, seed, versions).", ""]
    return "\n".join(lines)


def aa_gaps(front: list[dict[str, Any]]) -> list[tuple[int, str, float, float]]:
    """Fine-tuned entries whose AutoAttack accuracy lies more than :data:`AA_GAP_WARN` points below their
    PGD accuracy: ``(front index, trade-off, PGD %, AA %)`` -- PGD overstated their robustness."""
    return [(i, name, e["adv_acc"], e["aa_acc"]) for i, name, e in finetuned_entries(front)
            if pgd_overstates(e["adv_acc"], e.get("aa_acc"))]


def aa_gap_line(i: int, name: str, pgd: float, acc: float) -> str:
    """The one wording of an :func:`aa_gaps` warning (summary.md, the report page, the CLI's front print)."""
    return (f"#{i} ({name}): AutoAttack {acc:.1f} % is {pgd - acc:.1f} points below PGD {pgd:.1f} %: PGD "
            f"overstates this member's robustness")


def aa_scope_text(ft: dict[str, Any]) -> str:
    """Which members the summary's AutoAttack column covers (``pareto.json``'s finetune.autoattack_scope)."""
    if ft.get("autoattack", "off") == "off":
        return ""
    return (" (the knee and every fine-tuned member no larger)" if ft.get("autoattack_scope") == "up-to-knee"
            else " (every fine-tuned member)")


def finetune_lines(meta: dict[str, Any], front: list[dict[str, Any]], knee: int) -> list[str]:
    """The summary's section on the fine-tune stage: every trade-off entry of every fine-tuned member (the
    front table shows the first one), the AutoAttack version, and a warning per entry where AutoAttack
    lies more than :data:`AA_GAP_WARN` points below PGD."""
    if not finetuned_entries(front):
        return []
    ft = meta.get("finetune") or {}
    aa = ft.get("autoattack", "off")
    out = ["", "## Fine-tuned entries", "",
           f"Each fine-tuned member once per trade-off ({', '.join(ft.get('tradeoffs') or ['robust'])}); "
           f"epoch: the one kept ({ft.get('select', 'last')} on the validation split). "
           f"AutoAttack: {aa}{aa_scope_text(ft)}, on the same test images as PGD.", "",
           finetuned_table(front, knee).markdown()]
    for i, name, pgd, acc in aa_gaps(front):
        out += ["", f"**Warning:** {aa_gap_line(i, name, pgd, acc)}; quote the AutoAttack number."]
    return out


def latency_check_line(check: dict[str, Any]) -> str:
    """One line of the summary on the latency check (``pareto.json``'s ``latency_check``)."""
    if check.get("skipped"):
        return f"latency check ({check['source']}): skipped, {md_escape(str(check['skipped']))}"
    text = f"latency check: {check['measured']} front members measured on {check['source']}"
    if check.get("max_error_pct") is not None:
        text += (f" (the table's prediction off by {check['mean_abs_error_pct']:g} % on average, "
                 f"{check['max_error_pct']:+g} % at most)")
    if check.get("max_latency_ms") is not None:
        bad = check.get("violators") or []
        text += (f"; **{len(bad)} above --max-latency-ms {check['max_latency_ms']:g}** (#"
                 + ", #".join(str(i) for i in bad) + ")" if bad
                 else f"; none above --max-latency-ms {check['max_latency_ms']:g}")
    return text


def write_outputs(run_dir: Path, space: SearchSpace, meta: dict[str, Any], archive: list[dict[str, Any]],
                  front: list[dict[str, Any]], history: list[dict[str, Any]]) -> int:
    """Write pareto.json, layer_stats.csv, the plots and summary.md; returns the knee index."""
    objs = tuple(meta["objectives"])
    knee = knee_index(front, objs) if front else -1
    atomic_write_json(run_dir / "pareto.json", {**meta, "knee": knee, "front": front})
    atomic_write_text(run_dir / "layer_stats.csv", layer_stats_csv(space, front))
    if front:
        shown = objs + (("latency_ms",) if meta.get("latency") and "latency_ms" not in objs else ())
        plot_projections(run_dir / "front_projections.png", archive, front, shown)
        plot_layer_heatmap(run_dir / "layer_heatmap.png", space, front)
    if history:
        plot_hypervolume(run_dir / "hypervolume.png", history, f"{meta['algorithm']}, seed {meta['seed']}")
    atomic_write_text(run_dir / "summary.md", summary_markdown(meta, front, knee, history))
    return knee
