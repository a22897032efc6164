"""Experiment run folders: ``runs/experiment/<stamp>-<study>/``, shared by every study.

A study's folder is a run folder like the others: ``config.json`` first (the study's config, the
search run(s) it uses, the cells it will compute, versions), then ``results.jsonl`` growing one line
per finished *cell* (one source of the transfer matrix, one width, one member's training arm), and
``result.json`` + ``summary.md`` + the table's CSV and plot at the end. ``--resume DIR`` reopens the
folder with its recorded config and skips every cell already in ``results.jsonl``; only a
half-written last line is ever dropped from it.

``result.json`` has one shape for every study (``table``: columns and rows; ``plots``; ``findings``:
sentences), so ``nasctl report`` renders any study without knowing it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from nasctl.core import atomic_write_json, atomic_write_text, read_json_object
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, make_run_dir, write_run_config

log = logging.getLogger(__name__)

COMMAND = "experiment"
RESULTS = "results.jsonl"
RESULT = "result.json"
RESULT_FORMAT = "nasctl.experiment-result.v1"


@dataclass
class ExperimentFolder:
    """One study's run folder: its recorded config and the cells finished so far."""

    path: Path
    study: str
    config: dict[str, Any]  # config.json as written

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished cells by key, read from ``results.jsonl`` (a later line for a key wins)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.results_path.is_file():
            return out
        lines = self.results_path.read_text().split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["cell"])] = rec
            except (ValueError, KeyError, TypeError):
                if n < len(lines):  # the last piece without its newline is a half-written line: silent
                    log.warning(
                        "%s line %d is not a result: skipped (its cell is computed again)",
                        self.results_path,
                        n,
                    )
        return out

    def append(self, cell: str, result: dict[str, Any]) -> dict[str, Any]:
        """Record a finished cell: one JSON line, flushed and fsynced before the next cell starts."""
        rec = {"cell": cell, **result}
        text = json.dumps(rec, default=str)
        path = self.results_path
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a half-written line from a killed run: cut it off
                    _cut_last_line(path)
        with open(path, "a") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        return rec

    def finish(
        self,
        title: str,
        table: dict[str, Any],
        plots: Iterable[str],
        findings: Iterable[str],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``result.json`` and ``summary.md`` (the table, the findings, the files)."""
        doc = {
            "format": RESULT_FORMAT,
            "study": self.study,
            "title": title,
            "search_runs": self.config.get("search_runs", []),
            "table": table,
            "plots": list(plots),
            "findings": list(findings),
            **(extra or {}),
        }
        atomic_write_json(self.path / RESULT, doc)
        atomic_write_text(self.path / "summary.md", result_markdown(doc, self.path.name))
        return self.path / RESULT


def _cut_last_line(path: Path) -> None:
    data = path.read_bytes()
    atomic_write_text(path, data[: data.rfind(b"\n") + 1].decode())


def start(
    config: RunFolder, study: str, search_runs: list[str], extra: dict[str, Any] | None = None
) -> ExperimentFolder:
    """A new ``<run_root>/experiment/<stamp>-<study>[-name]/`` with the study's ``config.json`` written.

    ``search_runs``: absolute paths of the search run folders the study reads or makes, so
    ``nasctl report`` finds the study from any of them.
    """
    path = make_run_dir(config.run_root, COMMAND, "-".join(filter(None, (study, config.name))))
    doc = write_run_config(
        path,
        f"{COMMAND} {study}",
        config,
        {"study": study, "search_runs": [str(Path(p).resolve()) for p in search_runs], **(extra or {})},
    )
    return ExperimentFolder(path, study, doc)


def reopen(path: str | os.PathLike) -> ExperimentFolder:
    """An existing experiment folder, for ``--resume``: its study and recorded config."""
    path = Path(path)
    doc = read_json_object(path / "config.json", fix="start a new experiment",
                           missing=f"--resume {str(path)!r} is not an experiment folder (no config.json): "
                           f"give runs/experiment/<stamp>-<study>")
    if not str(doc.get("command", "")).startswith(COMMAND) or "study" not in doc:
        from nasctl.runfolder import describe

        raise NasctlError(f"--resume {str(path)!r} is {describe(path)}, not an experiment: give the folder "
                          f"of a 'nasctl experiment' study (runs/experiment/<stamp>-<study>)")
    return ExperimentFolder(path, str(doc["study"]), doc)


def set_search_runs(folder: ExperimentFolder, search_runs: list[str]) -> None:
    """Record search runs a study made itself (the width study's) in ``config.json`` as they appear."""
    runs = [str(Path(p).resolve()) for p in search_runs]
    if runs != folder.config.get("search_runs"):
        folder.config["search_runs"] = runs
        atomic_write_json(folder.path / "config.json", folder.config)


def find_experiments(run_root: str | os.PathLike, search_run: str | os.PathLike) -> list[Path]:
    """Experiment folders under ``run_root/experiment`` that name ``search_run``, oldest first."""
    want = str(Path(search_run).resolve())
    out = []
    for cfg in sorted(Path(run_root).glob(f"{COMMAND}/*/config.json")):
        try:
            doc = json.loads(cfg.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and want in (doc.get("search_runs") or []):
            out.append(cfg.parent)
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def markdown_table(table: dict[str, Any]) -> list[str]:
    """A ``{"columns": [...], "rows": [[...]]}`` table as Markdown lines (numbers formatted)."""
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    return lines


def result_markdown(doc: dict[str, Any], name: str) -> str:
    lines = [f"# nasctl experiment {doc['study']}: {name}", "", doc.get("title", ""), ""]
    lines += markdown_table(doc["table"])
    if doc.get("findings"):
        lines += [""] + [f"- {s}" for s in doc["findings"]]
    if doc.get("plots"):
        lines += [""] + [f"![{p}]({p})" for p in doc["plots"]]
    return "\n".join(lines) + "\n"
