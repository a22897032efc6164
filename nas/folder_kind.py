"""What kind of nasctl folder a path is, so an error about a wrong folder can say what it got.

Every run folder starts with ``config.json`` naming the command that made it (``write_run_config``); a
folder handed to the wrong command (a training run to ``report``, an export to ``finetune``) is told
apart by that, and the search run it was made from is read back from the same file where one is recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# command -> what its folder is, for "it is <...>, not a search run"
WHAT = {
    "train": "a 'nasctl train' run (a supernet)",
    "search": "a 'nasctl search' run",
    "finetune": "a 'nasctl finetune' folder (one fine-tuned subnet)",
    "eval": "a 'nasctl eval' folder (robustness results)",
    "export": "a 'nasctl export' folder (model files)",
    "experiment": "a 'nasctl experiment' folder (a study)",
}


def _config(folder: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The command whose run folder this is (``train``, ``search``, ``finetune``, ``eval``, ``export``,
    ``experiment``), or None for a folder nasctl did not make (no readable ``config.json``)."""
    doc = _config(Path(folder))
    command = str((doc or {}).get("command") or "").split(" ")[0]
    return command if command in WHAT else None


def describe(folder: str | os.PathLike) -> str:
    """A few words on what ``folder`` is: "a 'nasctl train' run (a supernet)", "not a nasctl run folder
    (no config.json)", ..."""
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind is not None:
        doc = _config(folder) or {}
        return WHAT[kind] if kind != "experiment" else f"a 'nasctl {doc.get('command')}' folder (a study)"
    if not folder.is_dir():
        return "not a folder"
    if (folder / "config.json").exists():
        return "not a nasctl run folder (its config.json is not one nasctl wrote)"
    return "not a nasctl run folder (no config.json)"


def source_run(folder: str | os.PathLike) -> str | None:
    """The search run a finetune, eval, export or experiment folder was made from, as its ``config.json``
    records it (None when it records none)."""
    doc = _config(Path(folder)) or {}
    runs = doc.get("search_runs") or []
    src = (doc.get("source") or {}).get("run") if isinstance(doc.get("source"), dict) else None
    cfg_run = (doc.get("config") or {}).get("run") if isinstance(doc.get("config"), dict) else None
    for candidate in (src, *(runs if isinstance(runs, list) else []), cfg_run):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None
