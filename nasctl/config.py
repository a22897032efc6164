"""Config merging and the value checks every command's config uses (the ground layer).

Configs are dataclasses; precedence is defaults, then a YAML file, then command-line flags, and unknown
keys are rejected with a "did you mean". A hand-edited file (a ``--config`` YAML, a run's ``config.json``)
is checked field by field, so each way it can be wrong is one :class:`NasctlError` naming the file, never
a TypeError deep inside a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

from nasctl.core import did_you_mean
from nasctl.errors import NasctlError
from nasctl.yaml_strict import DuplicateKeyError, load_strict

C = TypeVar("C")


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


def as_arguments(message: str, cls: type) -> str:
    """``message`` with each CLI flag of a field of ``cls`` (``--finetune-members``) written as the
    argument a Python caller passed (``finetune_members``)."""
    fields = {f.name.replace("_", "-"): f.name for f in dataclasses.fields(cls)}
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: fields.get(m.group(1), m.group(0)), message)


@contextlib.contextmanager
def speaks_arguments(cls: type) -> Iterator[None]:
    """A :class:`NasctlError` raised inside speaks of ``cls``'s arguments instead of CLI flags (its type,
    and so what a caller catches, unchanged)."""
    try:
        yield
    except NasctlError as e:
        e.args = (as_arguments(str(e), cls), *e.args[1:])
        raise
