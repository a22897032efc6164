"""Supernet checkpoints: self-describing, written atomically, loaded with clear errors.

A checkpoint carries the space definition, the data set's shape and normalisation, and the full
training config next to the weights (like nanoGPT's ``ckpt.pt``), so ``load_supernet`` rebuilds the
exact network without any other file. Files are written to a temporary name and renamed, so a
crash mid-write never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import NasctlError
from .space import SearchSpace
from .supernet import Supernet

FORMAT = "nasctl.supernet.v1"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch reports a failed write (a full disk) as a RuntimeError
            full = shutil.disk_usage(path.parent).free < (1 << 20)
            why = os.strerror(errno.ENOSPC) if full else f"torch.save failed ({str(e).splitlines()[0]})"
            raise OSError(errno.ENOSPC if full else errno.EIO, why, str(path)) from e
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: identifies a checkpoint across copies and moves."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """Load a nasctl checkpoint dict, turning every way it can be unreadable into one clear error.

    ``formats``: the checkpoint kinds the caller can use (supernet by default; a fine-tuned subnet's
    ``nasctl.subnet.v1`` too where either works). A run folder stands for the checkpoint inside it.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("supernet.pt", "checkpoint.pt", "subnet.pt"):
            if (path / name).exists():
                path = path / name
                break
    if not path.exists():
        raise NasctlError(f"checkpoint {str(path)!r} does not exist: give the path of a supernet.pt or "
                          f"checkpoint.pt written by 'nasctl train' (or its run folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError) as e:
        raise NasctlError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}): "
                          f"re-run 'nasctl train' "
                          f"(with --resume on its run folder) or pick another checkpoint") from e
    except Exception as e:  # torch's UnpicklingError and friends
        raise NasctlError(f"checkpoint {str(path)!r} is not a nasctl checkpoint ({type(e).__name__}): "
                          f"give a file written by 'nasctl train'") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in formats:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = ("a fine-tuned subnet: use it with 'nasctl eval --checkpoint' or 'nasctl export --checkpoint'"
                if got == "nasctl.subnet.v1" else "give a file written by 'nasctl train'")
        raise NasctlError(f"checkpoint {str(path)!r} is not a nasctl supernet checkpoint (format {got!r}, "
                          f"expected {' or '.join(map(repr, formats))}): {hint}")
    ckpt["path"] = str(path)
    return ckpt


@dataclass
class LoadedSupernet:
    supernet: Supernet
    space: SearchSpace
    dataset: dict[str, Any]  # DatasetInfo.to_dict() of the data set it was trained on
    config: dict[str, Any]  # the training config
    epoch: int  # epochs completed
    path: str
    eps: float  # the L-inf budget it was trained with (the data set's default for older checkpoints)


def build_supernet(space: SearchSpace, dataset: dict[str, Any]) -> Supernet:
    return Supernet(space, dataset["in_channels"], dataset["num_classes"], dataset["mean"], dataset["std"])


def load_supernet(path: str | os.PathLike, expect_space: SearchSpace | None = None) -> LoadedSupernet:
    """Rebuild a trained supernet from its checkpoint (eval mode, on the CPU).

    ``expect_space`` guards against mixing runs: a checkpoint from another space or width raises.
    """
    ckpt = read_checkpoint(path)
    space = SearchSpace.from_dict(ckpt["space"])
    if expect_space is not None and space.to_dict() != expect_space.to_dict():
        raise NasctlError(f"checkpoint {ckpt['path']!r} was trained on space {space.describe()}, not "
                          f"{expect_space.describe()}: pass the matching --space/--width-mult "
                          f"or another checkpoint")
    net = build_supernet(space, ckpt["dataset"])
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise NasctlError(f"checkpoint {ckpt['path']!r} does not match its own space definition "
                          f"({str(e).splitlines()[0][:120]}): "
                          f"it was written by another nasctl version") from e
    net.eval()
    return LoadedSupernet(net, space, ckpt["dataset"], ckpt.get("config", {}), int(ckpt.get("epoch", 0)),
                          ckpt["path"],
                          float(ckpt.get("eps", ckpt["dataset"]["default_eps"])))
