"""Self-describing run folders and config merging shared by every command.

A run folder (``runs/<command>/<YYYYmmdd-HHMMSS>-<name>/``) gets ``config.json`` -- the merged
config, the seed and every relevant library version -- before any work starts, so a result never
exists without the settings that produced it. Configs are dataclasses; precedence is defaults, then
a YAML file, then command-line flags, and unknown keys are rejected with a "did you mean".
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

from nasctl.core import atomic_write_json, did_you_mean, torch_threads, versions

from .errors import NasctlError
from .yaml_strict import DuplicateKeyError, load_strict

C = TypeVar("C")

MAX_NAME_BYTES = 100  # a run folder's name is <stamp>-<name>: well inside the file systems' 255 bytes


def merge_config(cls: type[C], yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build config ``cls`` from its defaults, then a YAML file, then non-None ``overrides``."""
    values: dict[str, Any] = {}
    source = "the command line"
    if yaml_path:
        path = Path(yaml_path)
        source = f"config file {yaml_path!r}"
        if not path.exists():
            raise NasctlError(f"config file {yaml_path!r} does not exist: check the --config path")
        try:
            loaded = load_strict(path.read_text(), same_key=_setting_name) or {}
        except DuplicateKeyError as e:
            raise NasctlError(f"config file {yaml_path!r} sets {e.key!r} twice, at line {e.first} and again "
                              f"at line {e.line} (YAML would silently keep the later): keep one of them"
                              ) from e
        except yaml.YAMLError as e:
            raise NasctlError(f"config file {yaml_path!r} is not valid YAML "
                              f"({str(e).splitlines()[0]}): fix it") from e
        if not isinstance(loaded, dict):
            raise NasctlError(f"config file {yaml_path!r} must hold a mapping of settings, "
                              f"not {type(loaded).__name__}")
        values.update({_setting_name(k): v for k, v in loaded.items()})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(cls, values, source)


def _setting_name(key: object) -> str:
    """The config field a YAML key sets: ``batch-size`` and ``batch_size`` are one setting."""
    return str(key).replace("-", "_")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(hint) for t in _allowed_types(a))
    if hint is type(None) or hint is None:
        return (type(None),)
    origin = typing.get_origin(hint)
    return (origin,) if isinstance(origin, type) else (hint,) if isinstance(hint, type) else (object,)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to a user who wrote 'true'
        return bool in allowed or object in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def build_config(cls: type[C], values: dict[str, Any], source: str) -> C:
    """Config ``cls`` from ``values`` (a YAML file's, a run's ``config.json``), checked field by field.

    Unknown keys get a "did you mean", values of the wrong type name the field and the type it takes,
    and the config's own ``validate()`` runs last: every way a hand-edited file can be wrong becomes
    one :class:`NasctlError` naming ``source``, never a TypeError deep inside a run.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in names:
            hint = did_you_mean(key, names) or f"; known: {', '.join(names)}"
            raise NasctlError(f"unknown setting {key!r} for {cls.__name__} in {source}{hint}")
        allowed = _allowed_types(hints[key])
        if not _type_ok(value, allowed):
            want = " or ".join(sorted({"none" if t is type(None) else t.__name__ for t in allowed}))
            raise NasctlError(f"setting {key!r} in {source} must be {want}, not {type(value).__name__} "
                              f"{value!r}: fix the value")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


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


def check_at_least_one(cfg: Any, names: dict[str, str] | tuple[str, ...]) -> None:
    """Every count setting in ``names`` (None means "not set") is >= 1; ``names`` may map each to a
    few words saying what it counts, for the message."""
    what = names if isinstance(names, dict) else dict.fromkeys(names, "")
    for name, words in what.items():
        value = getattr(cfg, name)
        if value is not None and value < 1:
            label = f" ({words})" if words else ""
            raise NasctlError(f"--{name.replace('_', '-')}{label} must be >= 1, got {value}")


def check_eps(eps: float | None, hint: str = "") -> None:
    """An L-inf radius on [0, 1] pixels must be in (0, 1] (None: the caller's default)."""
    if eps is not None and not 0 < eps <= 1:
        raise NasctlError(f"--eps is an L-inf radius on [0, 1] pixels: it must be in (0, 1], got {eps}{hint}")


def check_width(width_mult: object, flag: str = "--width-mult") -> None:
    """A width multiplier is a finite number in (0, MAX_WIDTH_MULT] (inf would overflow the channel counts,
    nan compare false everywhere): one line naming ``flag`` otherwise. None: the caller's default."""
    from .space.space import MAX_WIDTH_MULT, check_width_mult

    if width_mult is not None and not check_width_mult(width_mult):
        raise NasctlError(f"{flag} must be a finite number in (0, {MAX_WIDTH_MULT:g}] (it multiplies every "
                          f"channel choice; 1 is the space as written), got {width_mult!r}: give e.g. 0.5, 1 "
                          f"or 2")
