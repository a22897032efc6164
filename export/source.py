"""Where the model to export comes from: a search run's front or a checkpoint plus a genome.

:func:`load_source` is the one place that turns a checkpoint and an architecture into a static
``nn.Module``; today it reads supernet checkpoints (``nasctl train``) and extracts the subnet (never
the supernet itself). A fine-tuned subnet checkpoint (``nasctl finetune``) will be one more branch
here, with ``needs_bn_recalibration=False``.

Picking from a run (``pick_from_run``, ``latest_run``) lives in :mod:`nasctl.nas.select`, shared
with ``nasctl eval``; it is re-exported here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from nasctl.nas.checkpoint import load_supernet, sha256_file  # noqa: F401 (re-exported)
from nasctl.nas.select import RunPick, latest_run, pick_from_run, read_front  # noqa: F401 (re-exported)
from nasctl.nas.space import GenomeError, SearchSpace
from torch import nn

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


def load_source(checkpoint: str | os.PathLike, arch: str) -> ExportSource:
    """Load ``checkpoint`` and extract the static subnet ``arch`` (a genome string of its space).

    Raises :class:`GenomeError` when ``arch`` does not belong to the checkpoint's space and
    :class:`NasctlError` for unreadable checkpoints.
    """
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


