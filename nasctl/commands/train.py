"""``nasctl train``: adversarially train a weight-sharing supernet."""

from __future__ import annotations

import argparse

from ._common import (
    add_config_flags,
    add_dataset_flags,
    add_device_flag,
    command_parser,
    config_overrides,
    dataset_from_args,
    epoch_progress,
)


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(sub, name, help_text, "Checkpoints every epoch into runs/train/<stamp>-<name>/; "
                       "--resume RUN continues it.")
    add_train_flags(p)
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its last checkpoint")
    p.set_defaults(func=run)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    from nasctl.nas.space import builtin_spaces
    from nasctl.nas.training.supernet import TRAIN_ATTACKS

    g = p.add_argument_group("supernet training")
    add_dataset_flags(g)
    g.add_argument("--space", help=f"search space: auto (built from the input size), a built-in name "
                   f"({', '.join(builtin_spaces())}) or a YAML file (default: the data set's own; auto for "
                   "folder: and npz: data)")
    g.add_argument("--width-mult", type=float, help="width multiplier on every channel choice (default 1.0)")
    g.add_argument("--epochs", type=int, help="training epochs (default 60)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="initial SGD learning rate (cosine schedule)")
    g.add_argument("--attack", choices=TRAIN_ATTACKS, help="training attack (default pgd)")
    g.add_argument("--eps", type=float,
                   help="L-inf budget on [0,1] pixels (default: the data set's, digits 0.1)")
    g.add_argument("--attack-steps", type=int, help="PGD/TRADES inner steps (default 7)")
    g.add_argument("--sampling", choices=("uniform", "sandwich"),
                   help="paths trained per batch: uniform (default, one random subnet) "
                   "or sandwich (largest, smallest and random)")
    g.add_argument("--limit-train", type=int, help="train on the first N training images only (smoke runs)")
    g.add_argument("--train-subset", type=int, metavar="N",
                   help="train on a seeded, class-balanced subset of N training images (CPU budgets)")
    add_device_flag(g)
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA")
    add_config_flags(p)


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.nas.training.supernet import TrainConfig, resume_training, train_supernet

    if args.resume:
        path, history = resume_training(args.resume, epoch_progress(), epochs=args.epochs)
    else:
        dataset_from_args(args)
        cfg = merge_config(TrainConfig, args.config, config_overrides(args, TrainConfig))
        path, history = train_supernet(cfg, epoch_progress())
    if history:
        last = history[-1]
        for label, v in last.val.items():
            print(f"{label:>8} subnet: clean {v['clean_acc']:.1f} %  "
                  f"PGD-{last_steps(path)} {v['adv_acc']:.1f} %")
    print(f"supernet: {path}")
    return 0


def last_steps(path) -> int:
    import json

    cfg = json.loads((path.parent / "config.json").read_text())["config"]
    return int(cfg["eval_steps"])
