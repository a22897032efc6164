"""Where the model to export comes from: a search run's front or a checkpoint plus a genome.

:func:`load_source` is the one place that turns a checkpoint and an architecture into a static
``nn.Module``; today it reads supernet checkpoints (``nasctl train``) and extracts the subnet (never
the supernet itself). A fine-tuned subnet checkpoint (``nasctl finetune``) will be one more branch
here, with ``needs_bn_recalibration=False``: a fine-tuned subnet keeps its own statistics.

Picking from a run (``pick_from_run``, ``latest_run``) lives in :mod:`nasctl.nas.runs.select`, shared
with ``nasctl eval``; it is re-exported here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nasctl.core import sha256_file
from nasctl.nas.runs.select import RunPick, latest_run, pick_from_run, read_front  # noqa: F401 (re-exported)
from nasctl.nas.space import GenomeError, SearchSpace
from nasctl.nas.supernet.checkpoint import load_supernet

log = logging.getLogger(__name__)


@dataclass
class ExportSource:
    """A static model ready for preparation, with the provenance ``metadata.json`` records."""

    model: nn.Module  # static subnet in eval mode; input float [N, C, H, W] pixels in [0, 1]
    genome: str
    space: SearchSpace
    dataset: dict[str, Any]  # DatasetInfo.to_dict() of the data set the weights were trained on
    checkpoint: str
    checkpoint_sha256: str
    epoch: int
    train_config: dict[str, Any] = field(default_factory=dict)
    kind: str = "supernet"  # what the checkpoint held
    needs_bn_recalibration: bool = True  # supernet BN statistics are shared by all paths


def load_source(checkpoint: str | os.PathLike, arch: str | None) -> ExportSource:
    """Load ``checkpoint`` as a static model: a fine-tuned subnet as it is, or the subnet ``arch`` (a
    genome string of its space) extracted from a supernet.

    Raises :class:`GenomeError` when ``arch`` does not belong to the checkpoint's space (or names
    another genome than a subnet checkpoint's) and :class:`NasctlError` for unreadable checkpoints.
    """
    from nasctl.errors import NasctlError
    from nasctl.nas.supernet.checkpoint import FORMAT, read_checkpoint
    from nasctl.nas.supernet.subnet_ckpt import SUBNET_FORMAT, check_subnet_arch, subnet_from_checkpoint

    ckpt = read_checkpoint(checkpoint, formats=(FORMAT, SUBNET_FORMAT))  # its metadata checked there
    if ckpt["format"] == SUBNET_FORMAT:
        sub = subnet_from_checkpoint(ckpt)
        check_subnet_arch(sub, [arch] if arch else [])
        for p in sub.model.parameters():
            p.requires_grad_(False)
        return ExportSource(model=sub.model, genome=sub.genome, space=sub.space, dataset=dict(sub.dataset),
                            checkpoint=str(sub.path), checkpoint_sha256=sha256_file(sub.path),
                            epoch=int(ckpt.get("epoch", 0)), train_config=dict(sub.train_config),
                            kind="subnet", needs_bn_recalibration=False)
    if not arch:
        raise NasctlError(f"checkpoint {str(checkpoint)!r} is a supernet: say which subnet with "
                          f"--arch GENOME")
    loaded = load_supernet(checkpoint)
    try:
        genome = loaded.space.parse(arch)
    except GenomeError as e:
        raise GenomeError(f"--arch is not a subnet of checkpoint {loaded.path!r}: {e}") from e
    model = loaded.supernet.extract(genome).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return ExportSource(
        model=model,
        genome=genome.encode(),
        space=loaded.space,
        dataset=dict(loaded.dataset),
        checkpoint=str(loaded.path),
        checkpoint_sha256=sha256_file(loaded.path),
        epoch=loaded.epoch,
        train_config=dict(loaded.config),
    )
