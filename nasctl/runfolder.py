"""Self-describing run folders: where a command's results go, and how it works in one (the ground layer).

A run folder (``runs/<command>/<YYYYmmdd-HHMMSS>-<name>/``) gets ``config.json`` -- the merged config, the
seed and every relevant library version -- before any work starts, so a result never exists without the
settings that produced it. :func:`run_scope` is the one way a command holds its folder: the lock, a fresh
folder removed again when bad input stops the command before any work, Ctrl-C turned into
:class:`RunInterrupted` naming the folder to resume. Every folder names the command that made it, so a
folder handed to the wrong command is told apart (:func:`describe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from nasctl.core import atomic_write_json, torch_threads, versions
from nasctl.errors import NasctlError, RunInterrupted

MAX_NAME_BYTES = 100  # a run folder's name is <stamp>-<name>: well inside the file systems' 255 bytes


@dataclasses.dataclass
class RunFolder:
    """Where a command's results go: ``run_root/<command>/<stamp>-<name>/``.

    Every command's config derives from it, so ``--run-root`` and ``--name`` mean the same thing
    everywhere and the folder is made one way (an exclusive mkdir, :func:`make_run_dir`). Being a
    base class, its two fields come first in each ``config.json``.
    """

    run_root: str = "runs"
    name: str = ""  # run folder suffix; each command says its default

    def __post_init__(self) -> None:
        # every command's config passes here (the CLI's merge_config, a resumed config.json, the API), so a
        # --name that would put the run folder somewhere else is refused before any work
        if isinstance(self.name, str):
            check_run_name(self.name)

    def new_run_dir(self, command: str, default_name: str = "") -> Path:
        return make_run_dir(self.run_root, command, self.name or default_name)


def check_run_name(name: str) -> str:
    """``--name`` is one path component: the suffix of ``<stamp>-<name>`` inside the command's folder.

    A separator, ``.``/``..``, a NUL or another control character, a name of only spaces or one over
    :data:`MAX_NAME_BYTES` bytes would put the run folder outside ``run_root/<command>/`` (or fail to
    make it): each is one :class:`NasctlError` naming the flag and the fix. ``""`` means the default.
    """
    if not isinstance(name, str):
        raise NasctlError(f"--name must be text, not {type(name).__name__} {name!r}: give a folder name")
    problem = None
    if any(sep in name for sep in ("/", "\\", os.sep, os.altsep) if sep):
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character (NUL, newline, ...)"
    elif name.strip() in (".", ".."):
        problem = "is '.' or '..'"
    elif name and not name.strip():
        problem = "is only spaces"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise NasctlError(f"--name {name!r} {problem}: it is the suffix of the run folder's name, one path "
                          f"component inside <run-root>/<command>/; give a plain name such as 'digits-w2' "
                          f"(use --run-root to choose where run folders go)")
    return name


def make_run_dir(root: str | Path, command: str, name: str = "") -> Path:
    """A fresh ``root/command/<timestamp>-<name>`` folder (suffixed if the second is taken).

    Claimed with an exclusive ``mkdir``, not an existence check, so runs started in the same second
    by parallel processes each get their own folder. ``name`` must be one path component
    (:func:`check_run_name`), so the folder never lands outside ``root/command``.
    """
    check_run_name(name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / command / (f"{stamp}-{name}" if name else stamp)
    base.parent.mkdir(parents=True, exist_ok=True)
    path, i = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, i = base.with_name(f"{base.name}.{i}"), i + 1


def write_run_config(run_dir: Path, command: str, config: Any, extra: dict[str, Any] | None = None) -> dict:
    """Write ``config.json`` (config, seed, versions, command line) before work starts."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    doc = {"command": command, "argv": sys.argv, "config": cfg, "seed": cfg.get("seed"),
           "versions": versions(), "threads": torch_threads(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    atomic_write_json(run_dir / "config.json", doc)
    return doc


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder while this process writes into it.

    Two processes resuming one run would both repeat the work and interleave their archive lines. The
    lock is ``fcntl.flock`` on ``<run>/.lock``: the kernel drops it when the process dies, however it
    dies, so a crashed run never stays locked. The holder's pid is written into the file for the
    message the second process gets.
    """
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise NasctlError(f"run folder {str(run_dir)!r} is in use by process {holder} (another "
                              f"nasctl writing it): wait for it to finish or stop it, then try again"
                              ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def discard_if_unused(run_dir: str | Path) -> bool:
    """Remove a run folder that a failed start left with nothing but its config (and empty folders).

    A command that fails on bad input before doing any work should not leave a folder that looks like
    a run; one that did any work keeps everything. Returns whether the folder was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    files = [p for p in run_dir.rglob("*") if not p.is_dir()]
    if any(p.name != ".lock" and p != run_dir / "config.json" for p in files):
        return False
    for p in files:
        p.unlink()
    for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    run_dir.rmdir()
    return True


@contextlib.contextmanager
def run_scope(run_dir: str | Path, *, fresh: bool = True, lock: bool = True,
              on_interrupt: Callable[[], None] | None = None) -> Iterator[Path]:
    """Work inside a run folder: start, failure and Ctrl-C handled the one way every command needs.

    Holds the folder's lock (``lock``; ranks that do not write pass False). A :class:`NasctlError` --
    bad input found before any work -- removes a ``fresh`` folder that holds nothing but its config
    (:func:`discard_if_unused`; a folder with any result in it is kept whole) and propagates. Ctrl-C
    runs ``on_interrupt`` (e.g. mark a status file) and becomes :class:`RunInterrupted` carrying the
    folder, so the CLI can print the command that resumes it.
    """
    run_dir = Path(run_dir)
    try:
        with run_lock(run_dir) if lock else contextlib.nullcontext():
            yield run_dir
    except NasctlError:
        if fresh:
            discard_if_unused(run_dir)
        raise
    except KeyboardInterrupt as e:
        if isinstance(e, RunInterrupted):
            raise
        if on_interrupt is not None:
            on_interrupt()
        raise RunInterrupted(run_dir) from e


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
