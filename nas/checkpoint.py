"""Supernet checkpoints: self-describing, written atomically, loaded with clear errors.

A checkpoint carries the space definition, the data set's shape and normalisation, and the full
training config next to the weights (like nanoGPT's ``ckpt.pt``), so ``load_supernet`` rebuilds the
exact network without any other file. Files are written to a temporary name and renamed, so a
crash mid-write never leaves a truncated checkpoint under the real name.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasctl.core import sha256_file  # noqa: F401 (the checkpoint's identity, used with load_supernet)

from .errors import NasctlError
from .space import SearchSpace
from .supernet import Supernet

FORMAT = "nasctl.supernet.v1"


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
