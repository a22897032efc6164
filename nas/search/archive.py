"""The archive of a search run: every evaluated candidate, one JSON line each, appended as it finishes.

It is the search's cache (a genome is never evaluated twice) and its resume point (a resumed run
answers every archived candidate from it). Appends are flushed and fsynced per record.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Archive:
    """Append-only JSON-lines record of every evaluated candidate; the search's cache and its resume."""

    def __init__(self, path: Path, repair: bool = True):
        """``repair=False`` reads without cutting a half-written last line off the file: for tools that
        read other runs' archives, which may still be growing."""
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load(repair)

    # a record needs these to be scored; anything else it carries is extra
    REQUIRED = ("genome", "clean_acc", "adv_acc", "params", "generation")

    def _load(self, repair: bool) -> None:
        """Read every complete record. A crash can leave only one kind of damage -- a half-written
        last line (no newline) -- and only that is cut off (with ``repair``). A bad line anywhere else
        is somebody's edit or a disk error: it stays on disk untouched, is skipped with a warning that
        names its line number, and its candidate is simply evaluated again."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" for a complete file, else a half-written line
        for number, raw in enumerate(lines, 1):
            problem = None
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                problem = f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})"
            else:
                missing = ([k for k in self.REQUIRED if k not in rec] if isinstance(rec, dict)
                           else ["a JSON object"])
                if missing:
                    problem = f"missing {', '.join(missing)}"
                elif not isinstance(rec["genome"], str):
                    problem = "its genome is not a string"
            if problem:
                log.warning("archive %s line %d is not a valid record (%s): skipped and left as it is; its "
                            "candidate will be evaluated again", self.path, number, problem)
                continue
            self.records[rec["genome"]] = rec
        if tail:
            log.warning("archive %s: %s a half-written last line (a crash during a write)", self.path,
                        "dropping" if repair else "ignoring")
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(len(data) - len(tail))

    def __contains__(self, genome: str) -> bool:
        return genome in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[rec["genome"]] = rec
