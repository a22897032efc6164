"""Self-describing run folders and config merging shared by every command.

A run folder (``runs/<command>/<YYYYmmdd-HHMMSS>-<name>/``) gets ``config.json`` -- the merged
config, the seed and every relevant library version -- before any work starts, so a result never
exists without the settings that produced it. Configs are dataclasses; precedence is defaults, then
a YAML file, then command-line flags, and unknown keys are rejected with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .checkpoint import atomic_write_json
from .errors import NasctlError

C = TypeVar("C")

VERSIONED = ("nasctl", "torch", "torchvision", "numpy", "pymoo", "scikit-learn", "onnx", "onnxruntime",
             "onnx2tf", "tensorflow", "ai-edge-litert")


def versions() -> dict[str, str]:
    """Installed versions of the packages that can change a result (missing ones omitted)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def merge_config(cls: type[C], yaml_path: str | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build config ``cls`` from its defaults, then a YAML file, then non-None ``overrides``."""
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        if not path.exists():
            raise NasctlError(f"config file {yaml_path!r} does not exist: check the --config path")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise NasctlError(f"config file {yaml_path!r} is not valid YAML "
                              f"({str(e).splitlines()[0]}): fix it") from e
        if not isinstance(loaded, dict):
            raise NasctlError(f"config file {yaml_path!r} must hold a mapping of settings, "
                              f"not {type(loaded).__name__}")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key in values:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            raise NasctlError(f"unknown setting {key!r} for {cls.__name__}"
                              + (f": did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(names)}"))
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def make_run_dir(root: str | Path, command: str, name: str = "") -> Path:
    """A fresh ``root/command/<timestamp>-<name>`` folder (suffixed if the second is taken).

    Claimed with an exclusive ``mkdir``, not an existence check, so runs started in the same second
    by parallel processes each get their own folder.
    """
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
           "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
    atomic_write_json(run_dir / "config.json", doc)
    return doc
