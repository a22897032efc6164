"""The one training recipe's optimiser: SGD with Nesterov momentum, cosine-annealed to 0 over the run.

The supernet trainer and the static-subnet trainer (fine-tune stage, ``nasctl finetune``, the baselines)
share it, so "trained by the same recipe" in a comparison is true by construction, not by two copies
kept in step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def sgd_cosine(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float,
               epochs: int, nesterov: bool = True
               ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The optimiser and its per-epoch schedule (step the scheduler once per epoch)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
