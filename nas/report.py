"""``nasctl report RUN``: everything about one search run on one page that can be mailed.

A search run's results are spread over its folder and over the folders of what was done with it
afterwards. This module gathers them into one list of blocks (headings, paragraphs, tables, images)
and renders it twice from the same blocks: a self-contained HTML page (CSS inline, every plot
embedded as a base64 ``data:`` URI, no script, no network) and the same content as Markdown (images
linked by relative path). Sections:

- the run: data set, threat model, search settings, wall time; every config setting;
- the front: one table row per member with inherited (validation and test) and fine-tuned test
  accuracies, sizes and latency where measured; its plots;
- layer statistics: the heat map and ``layer_stats.csv``;
- experiments (``nasctl experiment``) whose ``config.json`` names this run, found under the run root;
- exports (``nasctl export``) whose ``report.json`` names this run as source, found under the run
  root: artifact sizes, int8 accuracy drop, deployed robustness;
- latency provenance; provenance (versions, seed, command line, checkpoint SHA-256s).

The run root is the folder above ``search/`` (``runs/`` for ``runs/search/<stamp>``), or ``run_root``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from nasctl.core import atomic_write_text
from nasctl.errors import NasctlError

from .render import tables
from .render.outputs import aa_gap_line, aa_gaps, aa_scope_text, latency_check_line
from .render.tables import cell, md_escape

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# stamped into every page this module writes, so a later report replaces its own files and nothing else
HTML_MARKER = '<meta name="generator" content="nasctl report">'
MD_MARKER = "<!-- generator: nasctl report -->"
HTML_SUFFIXES = (".html", ".htm")
# what a run folder (search, training, experiment, export, eval) holds: never a report's name inside a run
RUN_FILES = frozenset({
    "config.json", "pareto.json", "summary.md", "archive.jsonl", "history.json", "layer_stats.csv",
    "supernet.json", "front_projections.png", "layer_heatmap.png", "hypervolume.png", "metrics.jsonl",
    "checkpoint.pt", "supernet.pt", "subnet.pt", "result.json", "results.jsonl", "eval.json", "report.json",
    "metadata.json", ".lock",
})


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | p | note (a warning the reader must see) | list | table | img
    text: str = ""
    items: list[str] = field(default_factory=list)
    table: dict[str, Any] | None = None  # columns, rows, id
    path: Path | None = None  # an image file


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _kb(n: Any) -> str:
    return f"{n / 1024:.1f}" if isinstance(n, (int, float)) else ""


# --- the sections ------------------------------------------------------------------------------------
def _overview(run_dir: Path, doc: dict[str, Any]) -> list[Block]:
    from .space import SearchSpace

    fa = doc.get("final_attack") or {}
    sa = doc.get("search_attack") or {}
    try:
        space = SearchSpace.from_dict(doc["space"]).describe()
    except (KeyError, TypeError, ValueError):
        space = "unknown"
    items = [
        f"data set: {doc.get('dataset')}"
        + (
            f" (supernet trained on a class-balanced subset of {doc['train_subset']:,} images)"
            if doc.get("train_subset")
            else ""
        ),
        f"classes ({len(doc.get('classes') or [])}): {', '.join(doc.get('classes') or []) or 'not named'}",
        f"space: {space}",
        f"threat model: L-inf, eps = {doc.get('eps', float('nan')):.4g} on [0, 1] pixels",
        f"search: {doc.get('algorithm')}, population {doc.get('pop_size')}, "
        f"{doc.get('generations')} generations, {doc.get('evaluations')} subnets evaluated, "
        f"objectives {', '.join(doc.get('objectives') or [])}"
        + (f", constraints {doc['constraints']}" if doc.get("constraints") else ""),
        f"search-time attack: PGD-{sa.get('steps')} on {doc.get('val_images')} validation images; final: "
        f"PGD-{fa.get('steps')} x {fa.get('restarts')} restarts on {doc.get('final_images')} test images",
        f"wall time: {doc.get('seconds', 0):.0f} s",
    ]
    return [Block("h1", f"nasctl search run {run_dir.name}"), Block("list", items=items)]


def _config(run_dir: Path) -> list[Block]:
    cfg = _read_json(run_dir / "config.json")
    if not cfg:
        return [Block("h2", "Configuration"), Block("p", "config.json is missing or unreadable.")]
    rows = [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in (cfg.get("config") or {}).items()]
    return [
        Block("h2", "Configuration"),
        Block("p", "Every setting of the search, as written to config.json before it started."),
        Block("table", table={"columns": ["setting", "value"], "rows": rows, "id": "config"}),
    ]


def front_table(doc: dict[str, Any]) -> dict[str, Any]:
    """The front as a table (:func:`nasctl.nas.render.tables.front_table`, the one the CLI and
    summary.md show)."""
    return tables.front_table(doc["front"], doc.get("knee"), bool(doc.get("latency"))).as_dict()


def _front(run_dir: Path, doc: dict[str, Any]) -> list[Block]:
    fa = doc.get("final_attack") or {}
    ft = doc.get("finetune") or {}
    out = [
        Block("h2", f"Pareto front ({len(doc['front'])} members, knee marked *)"),
        Block(
            "p",
            f"val: PGD-{(doc.get('search_attack') or {}).get('steps')} on the validation images, "
            f"inherited weights (what the search ranked). test: PGD-{fa.get('steps')} x "
            f"{fa.get('restarts')} on the test split, inherited weights with BatchNorm recalibrated. "
            f"fine-tuned: the member trained on its own for {ft.get('epochs')} epochs (the weights "
            f"nasctl export ships), same test attack.",
        ),
        Block("table", table=front_table(doc)),
    ]
    out += _finetuned_entries(doc)
    for name, caption in (
        ("front_projections.png", "2-D projections of the front over every evaluated subnet"),
        ("hypervolume.png", "hypervolume per generation"),
    ):
        out.append(plot_block(run_dir / name, caption, f"nasctl search --resume {run_dir}"))
    return out


def _finetuned_entries(doc: dict[str, Any]) -> list[Block]:
    """Every trade-off entry of every fine-tuned member (the front table shows the first), with the
    AutoAttack number and a note where AutoAttack lies far below PGD."""
    front, knee = doc["front"], doc.get("knee")
    table = tables.finetuned_table(front, knee)
    if not table.rows:
        return []
    ft = doc.get("finetune") or {}
    out = [
        Block("h3", "Fine-tuned entries"),
        Block("p", "Each fine-tuned member once per trade-off "
                   f"({', '.join(ft.get('tradeoffs') or ['robust'])}); AutoAttack: "
                   f"{ft.get('autoattack', 'off')}{aa_scope_text(ft)}, on the same test images as PGD."),
        Block("table", table=table.as_dict()),
    ]
    out += [Block("note", aa_gap_line(*gap)) for gap in aa_gaps(front)]
    return out


def plot_block(path: Path, caption: str, redraw: str) -> Block:
    """The plot's image, or -- when its file is gone -- a note in its place naming it and the command that
    draws it again: a page that silently lacks a figure reads as if the figure never existed.
    :func:`write_report` also warns about every such note on stderr."""
    if path.is_file():
        return Block("img", caption, path=path)
    return Block("note", f"the plot {path.name} ({caption}) is missing from {path.parent}: draw it again "
                         f"with '{redraw}', then run nasctl report again")


def _layers(run_dir: Path) -> list[Block]:
    import csv

    out = [
        Block("h2", "Layer statistics of the front"),
        Block(
            "p",
            "How often each block type and width appears at each layer of the first front "
            "(TAM-NAS's design guideline for robust tiny networks).",
        ),
    ]
    out.append(plot_block(run_dir / "layer_heatmap.png", "block type and width per layer",
                          f"nasctl search --resume {run_dir}"))
    path = run_dir / "layer_stats.csv"
    if path.is_file():
        rows = list(csv.reader(path.read_text().splitlines()))
        if rows:
            out.append(Block("table", table={"columns": rows[0], "rows": rows[1:], "id": "layer-stats"}))
    return out


def _experiments(run_dir: Path, run_root: Path) -> list[Block]:
    from .experiments.folder import RESULT, find_experiments, reopen

    found = find_experiments(run_root, run_dir)
    out = [Block("h2", f"Experiments on this run ({len(found)})")]
    if not found:
        out.append(
            Block(
                "p",
                f"None under {run_root / 'experiment'}: run nasctl experiment transfer|width|"
                f"finetune-vs-scratch --run {run_dir} (docs/studies.md).",
            )
        )
    for path in found:
        folder = reopen(path)
        out.append(Block("h3", f"{folder.study}: {path.name}"))
        doc = _read_json(path / RESULT)
        if doc is None:
            out.append(
                Block(
                    "p",
                    f"Unfinished: {len(folder.done())} cells done. Finish it with nasctl experiment "
                    f"{folder.study} --resume {path}.",
                )
            )
            continue
        out.append(Block("p", doc.get("title", "")))
        table = dict(doc["table"], id=f"experiment-{path.name}")
        out.append(Block("table", table={**table, "rows": [[cell(v) for v in r] for r in table["rows"]]}))
        if doc.get("findings"):
            out.append(Block("list", items=list(doc["findings"])))
        for p in doc.get("plots") or []:
            redraw = f"nasctl experiment {folder.study} --resume {path}"
            out.append(plot_block(path / p, f"{folder.study}: {p}", redraw))
    return out


def find_exports(run_dir: Path, run_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Export folders under ``run_root/export`` whose ``report.json`` names ``run_dir`` as source."""
    want = run_dir.resolve()
    out = []
    for path in sorted(run_root.glob("export/*/report.json")):
        doc = _read_json(path)
        src = (doc or {}).get("source") or {}
        if src.get("run") and Path(src["run"]).resolve() == want:
            out.append((path.parent, doc))
    return out


def export_row(folder: Path, doc: dict[str, Any]) -> list[str]:
    src = doc.get("source") or {}
    sizes = {s.get("artifact"): s.get("size_bytes") for s in doc.get("steps") or [] if s.get("artifact")}
    int8 = (doc.get("checks") or {}).get("tflite_int8") or {}
    d = int8.get("detail") or {}
    rob = doc.get("robustness") or {}
    drop = (
        f"{d['int8_acc']:.1f} vs {d['float_acc']:.1f} ({int8.get('value', 0):+.1f})"
        if "int8_acc" in d and "float_acc" in d
        else ""
    )
    robust = (
        f"{rob['int8_robust_acc_min']:.1f} vs {rob['float_robust_acc_min']:.1f} ({rob.get('worst_attack')})"
        if "int8_robust_acc_min" in rob
        else ""
    )
    index = src.get("front_index")
    return [
        folder.name,
        str(doc.get("genome", "")),
        "" if index is None else f"{index}{'*' if src.get('knee') else ''}",
        str(doc.get("target", "")) + (" +int8" if doc.get("int8") else ""),
        str(doc.get("status", "")),
        _kb(sizes.get("model.onnx")),
        _kb(sizes.get("model_float32.tflite")),
        _kb(sizes.get("model_int8.tflite")),
        drop,
        robust,
    ]


def _exports(run_dir: Path, run_root: Path) -> list[Block]:
    found = find_exports(run_dir, run_root)
    out = [Block("h2", f"Exports from this run ({len(found)})")]
    if not found:
        out.append(Block("p", f"None under {run_root / 'export'}: nasctl export --run {run_dir} --int8."))
        return out
    out.append(
        Block(
            "p",
            "int8 clean accuracy vs float TFLite on the test split (drop in points); deployed "
            "robustness: the int8 model's robust accuracy (minimum over transfer, fake-quant white-box "
            "and Square attacks) vs the float model's, worst attack in brackets.",
        )
    )
    out.append(
        Block(
            "table",
            table={
                "columns": [
                    "folder",
                    "genome",
                    "front #",
                    "target",
                    "status",
                    "ONNX KB",
                    "float TFLite KB",
                    "int8 TFLite KB",
                    "int8 vs float clean %",
                    "int8 vs float robust %",
                ],
                "rows": [export_row(f, d) for f, d in found],
                "id": "exports",
            },
        )
    )
    return out


def _latency(doc: dict[str, Any]) -> list[Block]:
    lat = doc.get("latency")
    measured = [r for r in doc["front"] if r.get("latency_ms") is not None]
    out = [Block("h2", "Latency")]
    if not lat and not measured:
        return out + [
            Block("p", "Not measured: the search ran without --latency-source (docs/profiling.md).")
        ]
    if lat:
        out.append(Block("list", items=[f"{k}: {cell(v, 4)}" for k, v in lat.items()]))
    out.append(
        Block(
            "p",
            f"latency_ms of {len(measured)} of {len(doc['front'])} front members: the front table's "
            f"latency column.",
        )
    )
    check = doc.get("latency_check")
    if check:
        out.append(Block("p", latency_check_line(check).replace("**", "")))
    return out


def _provenance(run_dir: Path, doc: dict[str, Any]) -> list[Block]:
    from nasctl.core import sha256_file

    cfg = _read_json(run_dir / "config.json") or {}
    rows = [
        ["run folder", str(run_dir.resolve())],
        ["seed", cell(doc.get("seed"))],
        ["created", str(cfg.get("created", ""))],
        ["command line", " ".join(map(str, cfg.get("argv") or []))],
        ["supernet", str(doc.get("supernet", ""))],
        ["supernet sha256 (recorded)", str(doc.get("supernet_sha256"))],
    ]
    for r in doc["front"]:
        ref = r.get("finetuned_checkpoint")
        if ref:
            p = run_dir / ref
            rows.append(
                [f"fine-tuned {r['genome']}", f"{ref} sha256 {sha256_file(p) if p.is_file() else 'MISSING'}"]
            )
    rows += [[f"version: {k}", str(v)] for k, v in (cfg.get("versions") or {}).items()]
    return [
        Block("h2", "Provenance"),
        Block("table", table={"columns": ["what", "value"], "rows": rows, "id": "provenance"}),
    ]


def collect(run_dir: Path, doc: dict[str, Any], run_root: Path) -> list[Block]:
    return (
        _overview(run_dir, doc)
        + _front(run_dir, doc)
        + _layers(run_dir)
        + _experiments(run_dir, run_root)
        + _exports(run_dir, run_root)
        + _latency(doc)
        + _config(run_dir)
        + _provenance(run_dir, doc)
    )


# --- rendering ---------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:right}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}th{background:#f0f0f0}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}
code{font-size:0.9em}.note{background:#fff4d6;border-left:4px solid #e0a800;padding:0.4em 0.6em}"""


def png_data_uri(path: Path) -> str:
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise NasctlError(f"{str(path)!r} is not a PNG file: re-run the command that wrote it")
    return "data:image/png;base64," + base64.b64encode(data).decode()


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8">{HTML_MARKER}',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<p class="note"><strong>Note:</strong> {e(b.text)}</p>')
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            t = b.table
            out.append(
                f'<table id="{e(t.get("id", ""))}"><thead><tr>'
                + "".join(f"<th>{e(str(c))}</th>" for c in t["columns"])
                + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(f"<td>{e(cell(v))}</td>" for v in row) + "</tr>" for row in t["rows"]]
            out.append("</tbody></table>")
        elif b.kind == "img":
            out.append(
                f'<figure><img src="{png_data_uri(b.path)}" alt="{e(b.text)}">'
                f"<figcaption>{e(b.text)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"




def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    out: list[str] = [MD_MARKER, ""]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + md_escape(b.text), ""]
        elif b.kind in ("p", "note"):
            out += [("**Note:** " if b.kind == "note" else "") + md_escape(b.text), ""]
        elif b.kind == "list":
            out += [f"- {md_escape(i)}" for i in b.items] + [""]
        elif b.kind == "table":
            t = b.table
            cells = [[cell(v) for v in r] for r in t["rows"]]
            out.append(tables.Table([str(c) for c in t["columns"]], cells).markdown())
            out.append("")
        elif b.kind == "img":
            rel = os.path.relpath(b.path.resolve(), out_dir.resolve())
            out += [f"![{md_escape(b.text)}]({quote(Path(rel).as_posix())})", ""]
    return "\n".join(out)


def default_run_root(run_dir: Path) -> Path:
    """The run root a run folder lives under: the folder above the nearest ``search/`` or
    ``experiment/`` (``runs`` for ``runs/search/<stamp>``, and for a width study's
    ``runs/experiment/<stamp>-width/w1/search``)."""
    for folder in run_dir.resolve().parents:
        if folder.name in ("search", "experiment"):
            return folder.parent
    return run_dir.resolve().parent


def written_by_report(path: Path) -> bool:
    """Whether ``path`` is a page this module wrote: its marker (or, for pages of versions before the
    marker, the exact opening they had) within the first few KB."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    if path.suffix.lower() == ".md":
        return head.startswith(MD_MARKER) or head.startswith("# nasctl search run ")
    return HTML_MARKER in head or (head.startswith("<!DOCTYPE html>")
                                   and "<title>nasctl search run " in head[:400])


def check_report_paths(html_path: Path, md_path: Path, run_dir: Path, out: Any = None) -> None:
    """Refuse to write the page anywhere it would replace a file nasctl's report did not write.

    The page must be an ``.html`` file (its ``.md`` twin goes beside it, so a ``.md`` or ``.json`` name
    would make the two collide or replace data); neither file may name one of a run folder's own files
    (:data:`RUN_FILES`) inside the run; and a file already there must be an earlier report (its
    marker). One :class:`NasctlError` names the file and the fix.
    """
    flag = f"--out {str(out)!r}" if out else "the report"
    fix = "give a new file name ending in .html with --out (or a folder), or leave --out out"
    if html_path.suffix.lower() not in HTML_SUFFIXES:
        raise NasctlError(f"{flag} must name an .html file (the Markdown twin is written beside it as .md): "
                          f"{fix}")
    run = run_dir.resolve()
    for path in (html_path, md_path):
        what = (f"{flag} is" if path == html_path and str(path) == str(out)
                else f"{flag} would write {str(path)!r}, which is")
        resolved = path.resolve()
        if resolved.name in RUN_FILES and (resolved.parent == run or run in resolved.parents):
            raise NasctlError(f"{what} one of the run's own files: nasctl never replaces a file it did not "
                              f"write; {fix}")
        if path.exists() and not path.is_file():
            raise NasctlError(f"{what} a folder or not a plain file: {fix}")
        if path.is_file() and not written_by_report(path):
            raise NasctlError(f"{what} a file that no 'nasctl report' wrote: nasctl never replaces a file it "
                              f"did not write; {fix} (or move that file away)")


def claim_page(path: Path, flag: str) -> bool:
    """Make sure ``path`` may be written now; returns whether this call created it (empty) to hold the name.

    :func:`check_report_paths` looked before the pages were rendered; a file that appeared or changed
    since (another program, a second report) is not replaced either: a name that was free is claimed with
    an exclusive create, a page that was there is checked for the marker again, just before the writes.
    """
    if path.exists():
        if not written_by_report(path):
            raise NasctlError(f"{flag} would write {str(path)!r}, which is now a file that no 'nasctl "
                              f"report' wrote: nasctl never replaces a file it did not write; move that file "
                              f"away or give another --out")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise NasctlError(f"{str(path)!r} appeared while the report was written: nasctl never replaces a "
                          f"file it did not write; move it away or give another --out") from None
    return True


def write_pages(pages: list[tuple[Path, str]], flag: str) -> None:
    """Write every page atomically (temp file + ``os.replace``) once all of them are claimed
    (:func:`claim_page`), so no page is written unless every one may be; a failed write leaves no empty
    file behind that a later report would take for someone else's."""
    claimed: list[Path] = []
    try:
        for path, _ in pages:
            if claim_page(path, flag):
                claimed.append(path)
        for path, text in pages:
            atomic_write_text(path, text)
    except BaseException:
        for path in claimed:
            if path.is_file() and path.stat().st_size == 0:
                path.unlink()
        raise


def write_report(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    run_root: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` (default: inside the run folder) and the same content as ``.md`` beside it;
    returns both paths. One :class:`NasctlError` line for a run without ``pareto.json`` and for an ``out``
    that would replace a file no report wrote (:func:`check_report_paths`): nothing is written then.

    ``warn`` gets one line per note the page carries (a plot missing from its folder; default: the log's
    warning), so what the reader of the page sees is said where the report was made too.
    """
    from .runs.select import read_front

    run_dir, doc = read_front(run, instead=None)
    root = Path(run_root) if run_root else default_run_root(run_dir)
    html_path = Path(out) if out else run_dir / "report.html"
    if html_path.is_dir():
        html_path = html_path / f"report-{run_dir.name}.html"
    md_path = html_path.with_suffix(".md")
    check_report_paths(html_path, md_path, run_dir, out)
    blocks = collect(run_dir, doc, root)
    title = f"nasctl search run {run_dir.name}"
    pages = [(html_path, render_html(blocks, title)), (md_path, render_markdown(blocks, md_path.parent))]
    write_pages(pages, f"--out {str(out)!r}" if out else "the report")
    for b in blocks:
        if b.kind == "note":
            (warn or log.warning)(b.text)
    return html_path, md_path
