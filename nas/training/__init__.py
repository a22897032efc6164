"""The training layer: the adversarial supernet trainer (``supernet``: ``nasctl train``, checkpoints each
epoch, ``--resume``, DDP), the one trainer of static subnets with its recipe dataclass, trade-offs and
epoch selection (``subnet``), and the one optimiser recipe both use (``optim``).

It stands on ``data``, ``space``, ``supernet`` and ``attacks``; the search and the runs stand on it.
"""

from .optim import sgd_cosine
from .subnet import (
    TRADEOFFS,
    EpochSelection,
    FinetuneConfig,
    SubnetTrainConfig,
    adversarial_train,
    parse_tradeoffs,
    tradeoff_recipe,
)
from .supernet import TrainCallbacks, TrainConfig, Trainer, resume_training, train_supernet

__all__ = [
    "TRADEOFFS", "EpochSelection", "FinetuneConfig", "SubnetTrainConfig", "TrainCallbacks", "TrainConfig",
    "Trainer", "adversarial_train", "parse_tradeoffs", "resume_training", "sgd_cosine", "tradeoff_recipe",
    "train_supernet",
]
