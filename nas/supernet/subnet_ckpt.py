"""Checkpoints of one static subnet (``nasctl finetune``, the search's fine-tune stage).

A supernet checkpoint holds every path with shared BatchNorm statistics; a subnet checkpoint holds one
trained network with its own statistics, so nothing is recalibrated when it is evaluated or exported.
Like the supernet's, it is self-describing: the space, genome and data set travel with the weights,
and :func:`load_subnet` rebuilds the exact module without any other file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nasctl.core import atomic_torch_save

from ..space import GenomeError, SearchSpace
from .checkpoint import SUBNET_FORMAT, build_supernet, load_weights, read_checkpoint


@dataclass
class LoadedSubnet:
    model: nn.Module  # eval mode, on the CPU
    genome: str
    space: SearchSpace
    dataset: dict[str, Any]
    eps: float  # the L-inf radius it was trained against
    config: dict[str, Any]  # the fine-tune settings
    train_config: dict[str, Any]  # the supernet's training config (its seed fixes the data split)
    source: dict[str, Any]  # where the starting weights came from
    path: str


def save_subnet(path: str | os.PathLike, model: nn.Module, genome: str, space: SearchSpace,
                dataset: dict[str, Any], eps: float, config: dict[str, Any], train_config: dict[str, Any],
                source: dict[str, Any], epoch: int) -> Path:
    """Write a subnet checkpoint atomically (temp file + rename)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": SUBNET_FORMAT, "kind": "subnet", "genome": genome, "space": space.to_dict(),
                       "dataset": dataset, "eps": float(eps), "config": config, "train_config": train_config,
                       "source": source, "epoch": int(epoch), "model": state}, path)
    return path


def is_subnet_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == SUBNET_FORMAT


def load_subnet(path: str | os.PathLike) -> LoadedSubnet:
    """Rebuild a fine-tuned subnet from its checkpoint (eval mode, CPU), with one clear error per failure."""
    ckpt = read_checkpoint(path, formats=(SUBNET_FORMAT,))
    return subnet_from_checkpoint(ckpt)


def subnet_from_checkpoint(ckpt: dict[str, Any]) -> LoadedSubnet:
    """The subnet of a checkpoint dict from :func:`read_checkpoint` (whose metadata it has checked)."""
    space = SearchSpace.from_dict(ckpt["space"])
    genome = space.parse(ckpt["genome"])
    model = build_supernet(space, ckpt["dataset"]).extract(genome)
    load_weights(model, ckpt, "genome")
    return LoadedSubnet(model.eval(), genome.encode(), space, ckpt["dataset"], float(ckpt["eps"]),
                        ckpt.get("config") or {}, ckpt.get("train_config") or {}, ckpt.get("source") or {},
                        ckpt["path"])


def check_subnet_arch(sub: LoadedSubnet, arch: Sequence[str]) -> None:
    """Refuse an ``--arch`` that is not the one genome a fine-tuned subnet checkpoint holds.

    ``eval`` and ``export`` take ``--checkpoint subnet.pt`` without ``--arch``; with one naming another
    genome they would use the checkpoint's own network and say nothing (a silent wrong answer). An
    ``--arch`` equal to the checkpoint's genome (in any spelling the space parses) is fine.
    """
    fix = ("drop --arch to use this subnet, or give the supernet (--checkpoint SUPERNET.pt --arch GENOME) "
           "for another genome")
    for text in arch:
        try:
            same = sub.space.parse(text).encode() == sub.genome
        except GenomeError as e:
            raise GenomeError(f"--arch {text!r} is not a genome of the space of checkpoint {sub.path!r} "
                              f"({e}), a fine-tuned subnet that holds genome {sub.genome}: {fix}") from e
        if not same:
            raise GenomeError(f"--arch {text!r} is not the subnet in checkpoint {sub.path!r}: it is a "
                              f"fine-tuned subnet that holds genome {sub.genome}; {fix}")
