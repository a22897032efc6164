"""Adversarial training of one static subnet: from scratch, or fine-tuned from inherited weights.

This is the stand-alone half of TAM-NAS's question (c) and the reference the ranking benchmark
compares inherited weights against: the same recipe as the supernet (SGD + Nesterov, cosine
schedule, PGD-7 with step eps/4 by default) applied to a plain ``nn.Module``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import PGD, evaluate, make_attack
from .data import DataSplits


@dataclass
class SubnetTrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True  # the supernet trainer's choice
    weight_decay: float = 5e-4
    attack: str = "pgd"
    attack_steps: int = 7
    eps: float = 0.1
    # epochs over which the training eps ramps up linearly from eps/eps_warmup (0: full eps from the
    # start); the supernet trainer ramps over 10 epochs
    eps_warmup: int = 0
    seed: int = 0


def reset_weights(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer (train from scratch with the same architecture)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    return model


def adversarial_train(model: nn.Module, data: DataSplits, cfg: SubnetTrainConfig,
                      device: torch.device | str = "cpu") -> dict:
    """Train ``model`` in place on adversarial examples; returns throughput and the last loss."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    data_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator().manual_seed(cfg.seed + 1)
    images, t0, loss = 0, time.perf_counter(), torch.tensor(0.0)
    for epoch in range(cfg.epochs):
        eps = cfg.eps * min(1.0, (epoch + 1) / cfg.eps_warmup) if cfg.eps_warmup > 0 else cfg.eps
        attack = make_attack(cfg.attack, eps=eps, steps=cfg.attack_steps, alpha=eps / 4, model_mode="train")
        model.train()
        for x, y in data.train.batches(cfg.batch_size, shuffle=True, generator=data_gen, drop_last=True):
            x, y = x.to(device), y.to(device)
            x_adv = attack(model, x, y, attack_gen)
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    return {"images_per_s": images / max(seconds, 1e-9), "seconds": seconds, "last_loss": loss.item()}


def robust_accuracy(model: nn.Module, split, eps: float, steps: int = 20,
                    seed: int = 0) -> tuple[float, float]:
    """(clean %, PGD-``steps`` %) in eval mode."""
    r = evaluate(model, split.batches(256), PGD(eps=eps, steps=steps), "cpu",
                 torch.Generator().manual_seed(seed))
    return r.clean_acc, r.adv_acc
