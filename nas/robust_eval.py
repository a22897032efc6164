"""Strong robustness evaluation of chosen subnets (``nasctl eval``).

The search ranks candidates with a cheap proxy; a claim about a chosen network needs the strong
protocol: eval mode, BN recalibrated, PGD with many steps and random restarts on the test split,
cross-checked with an independent implementation (the Adversarial Robustness Toolbox's PGD) and,
where the optional ``pyautoattack`` package is installed, AutoAttack (standard: APGD-CE, APGD-T,
FAB-T, Square). The reported robust accuracy is the minimum over every attack that ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .attacks import PGD, evaluate
from .data import TensorSplit
from .errors import NasctlError
from .evaluate import genome_seed

log = logging.getLogger(__name__)


@dataclass
class StrongEvalConfig:
    steps: int = 50
    restarts: int = 5
    n_images: int | None = None  # None: the whole test split
    art: bool = True  # cross-check with ART's PGD when installed
    autoattack: bool = True  # AutoAttack (standard) when the autoattack package is installed
    seed: int = 0
    eps: float | None = None  # L-inf radius on [0, 1] pixels; None: the supernet's training eps

    def validate(self) -> None:
        for name in ("steps", "restarts", "n_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NasctlError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.eps is not None and not 0 < self.eps <= 1:
            raise NasctlError(f"--eps is an L-inf radius on [0, 1] pixels: it must be in (0, 1], got "
                              f"{self.eps}")


def _art_pgd_acc(model: torch.nn.Module, split: TensorSplit, eps: float, steps: int, shape, classes: int,
                 seed: int) -> float | None:
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(shape),
                            nb_classes=classes, clip_values=(0.0, 1.0))
    x, y = split.numpy_images(), split.labels.numpy()
    attack = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                      num_random_init=1, batch_size=256, verbose=False)
    state = np.random.get_state()
    np.random.seed(seed % (2**32))  # ART draws its random start from numpy's global generator
    try:
        x_adv = attack.generate(x=x)
    finally:
        np.random.set_state(state)
    with torch.no_grad():
        ok = model(torch.from_numpy(x)).argmax(1).numpy() == y
        ok &= model(torch.from_numpy(x_adv)).argmax(1).numpy() == y
    return 100.0 * float(ok.mean())


def _autoattack_acc(model: torch.nn.Module, split: TensorSplit, eps: float, seed: int) -> float | None:
    """AutoAttack (standard) from the ``pyautoattack`` package, or the original ``autoattack``."""
    x, y = torch.from_numpy(split.numpy_images()), split.labels
    try:
        from pyautoattack import AutoAttack

        adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)
        x_adv = adversary.run_standard_evaluation(x, y, batch_size=256)
    except ImportError:
        try:
            from autoattack import AutoAttack
        except ImportError:
            return None
        adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, verbose=False)
        x_adv = adversary.run_standard_evaluation(x, y, bs=256)
    if isinstance(x_adv, (tuple, list)):  # pyautoattack returns (x_adv, y_adv)
        x_adv = x_adv[0]
    with torch.no_grad():
        return 100.0 * float((model(x_adv).argmax(1) == y).float().mean())


def strong_evaluation(model: torch.nn.Module, genome: str, split: TensorSplit, eps: float,
                      info: dict[str, Any], cfg: StrongEvalConfig) -> dict[str, Any]:
    """Clean accuracy and robust accuracy under every available attack, in percent."""
    if cfg.steps < 1 or cfg.restarts < 1:
        raise NasctlError(f"--steps and --restarts must be >= 1 (got {cfg.steps}, {cfg.restarts})")
    model.eval()
    if cfg.n_images:
        split = split.subset(cfg.n_images)
    pgd = PGD(eps=eps, steps=cfg.steps, restarts=cfg.restarts)
    gen = torch.Generator().manual_seed(genome_seed(cfg.seed + 7, genome))
    r = evaluate(model, split.batches(256), pgd, "cpu", gen)
    out: dict[str, Any] = {"genome": genome, "images": r.n, "eps": eps, "clean_acc": r.clean_acc,
                           "attacks": {f"pgd{cfg.steps}x{cfg.restarts}": {"acc": r.adv_acc, **pgd.to_dict()}}}
    if cfg.art:
        acc = _art_pgd_acc(model, split, eps, cfg.steps,
                           (info["in_channels"], info["resolution"], info["resolution"]),
                           info["num_classes"], cfg.seed)
        if acc is not None:
            out["attacks"]["art_pgd"] = {"acc": acc, "attack": "ART ProjectedGradientDescent",
                                         "steps": cfg.steps, "eps": eps, "restarts": 1}
    if cfg.autoattack:
        acc = _autoattack_acc(model, split, eps, cfg.seed)
        if acc is not None:
            out["attacks"]["autoattack"] = {"acc": acc, "attack": "AutoAttack standard", "eps": eps}
        else:
            log.info("AutoAttack is not installed (pip install pyautoattack): reporting PGD only")
    out["robust_acc"] = min(a["acc"] for a in out["attacks"].values())
    return out
