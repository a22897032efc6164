"""Adversarial training of one static subnet: fine-tuned from inherited weights, or from scratch.

Inherited weights are shared by thousands of paths, so a subnet's own accuracy after a short
training of its own is what a user deploys (and what TAM-NAS's question (c) compares with training
from scratch). One trainer for every static subnet -- the search's fine-tune stage, ``nasctl
finetune``, the baselines and ranking benchmarks: the supernet's recipe (SGD + Nesterov, cosine
schedule, PGD-7 with step eps/4) applied to a plain ``nn.Module``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder

from ..attacks import ATTACKS, PGD, accuracy_under_attack
from ..attacks.autoattack import check_version
from ..data import DataSplits
from .optim import sgd_cosine

log = logging.getLogger(__name__)


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
    # the model's mode while the attack is crafted: "train" (the supernet trainer's: batch statistics, as
    # the update sees them) or "eval" (running statistics, as a plain PGD-AT loop does: a weaker attack
    # at train time, so a more accurate and less robust model)
    craft_mode: str = "train"
    drop_last: bool = True  # drop the last short batch of each epoch (the supernet trainer's choice)
    seed: int = 0


# The clean/robust trade-off as a control (issue 22.2): each entry is a recipe of the same budget (epochs,
# lr, batch, PGD-7, eps) that lands at another point of the trade-off. Measured on the digits front's
# 1,442-param member from inherited weights (BENCHMARKS.md, "Trade-off control"): "robust" is the project's
# trainer; "accurate" is the plain PGD-AT loop the independent baselines were trained with (attack crafted in
# eval mode, momentum without Nesterov, every batch kept), about 2-3 points more clean accuracy for a few
# points less PGD accuracy.
TRADEOFFS: dict[str, dict[str, Any]] = {
    "robust": {},
    "accurate": {"craft_mode": "eval", "nesterov": False, "drop_last": False},
}


def tradeoff_recipe(base: SubnetTrainConfig, name: str) -> SubnetTrainConfig:
    """``base`` with the settings of trade-off ``name`` (:data:`TRADEOFFS`)."""
    if name not in TRADEOFFS:
        raise NasctlError(f"unknown trade-off {name!r}: choose from {', '.join(TRADEOFFS)}")
    return replace(base, **TRADEOFFS[name])


def parse_tradeoffs(text: str | list[str] | tuple[str, ...], flag: str = "--tradeoff") -> list[str]:
    """``robust,accurate`` -> the names, checked, in the order given (duplicates dropped)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise NasctlError(f"{flag} needs at least one of: {', '.join(TRADEOFFS)}")
    for n in names:
        if n not in TRADEOFFS:
            raise NasctlError(f"{flag}: unknown trade-off {n!r}; choose from {', '.join(TRADEOFFS)}")
    return list(dict.fromkeys(names))


@dataclass
class EpochSelection:
    """Which epoch's weights a fine-tuning keeps, judged on the validation split (never the test split).

    Adversarial training overfits robustly (Rice et al. 2020: PGD accuracy on held-out images peaks and
    then falls while the training loss keeps dropping), so the last epoch is not always the best one to
    ship. Every ``every`` epochs (and after the last) the model is scored in eval mode on the first
    ``val_size`` validation images with the search's attack (PGD-``pgd_steps``, the same seeded random
    start each time so that epochs compare like for like); ``best`` keeps the weights of the highest PGD
    accuracy (clean accuracy breaks ties, then the earlier epoch), ``last`` the final ones. With
    ``patience`` set, training stops once that many epochs have passed without a new best, counted from
    the second half of the schedule at the earliest (a stop before the learning rate has decayed ships a
    half-trained epoch).
    """

    mode: str = "best"  # best | last
    every: int = 4
    patience: int | None = 12  # epochs without a new best before stopping early; None or 0: never
    val_size: int = 200
    pgd_steps: int = 10
    seed: int = 0

    MODES = ("best", "last")

    def validate(self, flag_prefix: str = "") -> None:
        """``flag_prefix``: how the command spells these flags (``finetune-`` for ``nasctl search``), so
        the error names a flag the user's command has."""
        f = f"--{flag_prefix}"
        if self.mode not in self.MODES:
            raise NasctlError(f"{f}select must be 'best' or 'last', got {self.mode!r}")
        if self.every < 1 or self.val_size < 1 or self.pgd_steps < 1:
            raise NasctlError(f"{f}select-every, the validation images and PGD steps must be >= 1 (got "
                              f"{self.every}, {self.val_size}, {self.pgd_steps})")
        if self.patience is not None and self.patience < 0:
            raise NasctlError(f"{f}patience must be >= 1 epoch (0: no early stop), got {self.patience}")


class _Selector:
    """Scores the model on validation images as it trains and keeps the chosen epoch's weights."""

    def __init__(self, sel: EpochSelection, data: DataSplits, eps: float, epochs: int, device) -> None:
        self.sel, self.eps, self.epochs, self.device = sel, eps, epochs, torch.device(device)
        self.val = data.val.subset(min(sel.val_size, len(data.val)))
        self.curve: list[dict[str, float]] = []
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def after_epoch(self, model: nn.Module, epoch: int) -> bool:
        """Score at the planned epochs; returns True when training should stop (patience spent)."""
        if epoch % self.sel.every and epoch != self.epochs:
            return False
        r = accuracy_under_attack(model, self.val, PGD(eps=self.eps, steps=self.sel.pgd_steps), self.device,
                                  seed=self.sel.seed)
        self.curve.append({"epoch": epoch, "val_clean_acc": r.clean_acc, "val_adv_acc": r.adv_acc})
        if self.best is None or (r.adv_acc, r.clean_acc) > self.best:
            self.best, self.best_epoch = (r.adv_acc, r.clean_acc), epoch
            if self.sel.mode == "best":
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # the patience runs from the second half of the schedule at the earliest: the cosine schedule's
        # low-learning-rate tail is where a fine-tuning gains most, and a stop before it ships an early,
        # half-trained epoch (measured: a 1,442-param member stopped at epoch 24 of 40 with its best at 12,
        # 92.4 / 61.0, where running on kept epoch 32, 95.2 / 66.2)
        patience = self.sel.patience
        start = max(self.best_epoch, self.epochs // 2)
        return bool(patience) and epoch - start >= patience and epoch < self.epochs

    def finish(self, model: nn.Module, epochs_run: int) -> dict[str, Any]:
        """Load the chosen epoch's weights (``best``) and describe the choice for result.json."""
        chosen = self.best_epoch if self.sel.mode == "best" else epochs_run
        if self.sel.mode == "best" and self.best_state is not None and chosen != epochs_run:
            model.load_state_dict(self.best_state)
        return {"mode": self.sel.mode, "every": self.sel.every, "patience": self.sel.patience,
                "split": "val", "val_images": len(self.val),
                "attack": PGD(eps=self.eps, steps=self.sel.pgd_steps).to_dict(), "curve": self.curve,
                "chosen_epoch": chosen, "epochs_run": epochs_run, "stopped_early": epochs_run < self.epochs}


def adversarial_train(model: nn.Module, data: DataSplits, cfg: SubnetTrainConfig,
                      device: torch.device | str = "cpu",
                      on_epoch: Callable[[int, float], None] | None = None,
                      select: EpochSelection | None = None) -> dict:
    """Train ``model`` in place on adversarial examples; returns throughput and the last loss.

    ``on_epoch(epoch, loss)`` is called after each epoch (progress display). With ``select``, the
    model is scored on the validation split as it trains and the chosen epoch's weights are the ones
    left in ``model`` (:class:`EpochSelection`); the result then has a ``selection`` entry.
    """
    model.to(device)
    selector = _Selector(select, data, cfg.eps, cfg.epochs, device) if select is not None else None
    epochs_run = cfg.epochs
    opt, sched = sgd_cosine(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs,
                            cfg.nesterov)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    images, t0, loss = 0, time.perf_counter(), torch.tensor(0.0)
    for epoch in range(cfg.epochs):
        eps = cfg.eps * min(1.0, (epoch + 1) / cfg.eps_warmup) if cfg.eps_warmup > 0 else cfg.eps
        attack = replace(ATTACKS[cfg.attack].for_training(eps, cfg.attack_steps, eps / 4),
                         model_mode=cfg.craft_mode)
        model.train()
        for x, y in data.train.batches(cfg.batch_size, shuffle=True, generator=data_gen,
                                       drop_last=cfg.drop_last):
            x, y = x.to(device), y.to(device)
            x_adv = attack(model, x, y, attack_gen)
            clean_logits = model(x) if attack.needs_clean_logits else None
            loss = attack.training_loss(model(x_adv), y, clean_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, loss.item())
        if selector is not None and selector.after_epoch(model, epoch + 1):
            epochs_run = epoch + 1
            log.info("early stop after epoch %d: validation PGD accuracy has not improved for %d epochs "
                     "(best %.1f %% at epoch %d)", epochs_run, select.patience, selector.best[0],
                     selector.best_epoch)
            break
    seconds = time.perf_counter() - t0
    model.eval()
    out = {"images_per_s": images / max(seconds, 1e-9), "seconds": seconds, "last_loss": loss.item()}
    if selector is not None:
        out["selection"] = selector.finish(model, epochs_run)
    return out


@dataclass
class FinetuneConfig(RunFolder):
    """``nasctl finetune``: which subnet, how long, and the recipe (the supernet's, shorter)."""

    run: str | None = None  # search run folder; None: the newest under run_root/search
    pick: str = "knee"  # knee | INDEX | GENOME of that run's front
    from_scratch: bool = False  # re-initialise instead of starting from the inherited weights
    epochs: int = 40  # the baselines' recipe (bench/bench_baselines.py), as in the search's fine-tune stage
    lr: float = 0.05  # half the supernet's: the weights are already trained
    batch_size: int = 64
    attack_steps: int = 7  # PGD-7 with step eps/4, as in the supernet's training
    eps: float | None = None  # None: the search's
    final_steps: int = 20  # the search's final attack: PGD-20 x 3 restarts on the test split
    final_restarts: int = 3
    # which epoch to keep (EpochSelection): the best on the validation split with the search's attack
    select: str = "best"  # best | last
    select_every: int = 4  # score the validation split every N epochs
    patience: int | None = 12  # stop after N epochs without a better validation PGD accuracy; 0: never
    select_val_size: int = 200  # the search's val_size
    select_pgd_steps: int = 10  # the search's pgd_steps
    tradeoff: str = "robust"  # the recipe's point of the clean/robust trade-off (TRADEOFFS)
    # AutoAttack on the test images after training (attacks/autoattack.py): standard | apgd (APGD-CE + APGD-T)
    # | off; recorded as aa_acc in result.json, with a warning when it is AA_GAP_WARN points below PGD
    autoattack: str = "apgd"
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        from nasctl.config import check_at_least_one, check_eps

        check_at_least_one(self, ("epochs", "batch_size", "attack_steps", "final_steps", "final_restarts"))
        if not self.lr > 0:
            raise NasctlError(f"--lr must be > 0, got {self.lr}")
        check_eps(self.eps)
        self.selection().validate()
        parse_tradeoffs([self.tradeoff])
        check_version(self.autoattack)

    def recipe(self, eps: float) -> SubnetTrainConfig:
        """The training recipe these settings stand for (the one recipe dataclass, with this config's
        trade-off applied) at the run's ``eps``."""
        return tradeoff_recipe(SubnetTrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                                 attack_steps=self.attack_steps, eps=eps, seed=self.seed),
                               self.tradeoff)

    def selection(self) -> EpochSelection:
        """The epoch-selection rule of this fine-tuning (validated by :meth:`validate`)."""
        return EpochSelection(mode=self.select, every=self.select_every, patience=self.patience,
                              val_size=self.select_val_size, pgd_steps=self.select_pgd_steps, seed=self.seed)
