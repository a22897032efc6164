"""Deployed robustness: how robust is the int8 model that ships, not the float model that trained?

The int8 interpreter has no gradients, so three attacks stand in, and the report keeps the worst:
(a) transfer -- PGD crafted on the float PyTorch model, replayed on the int8 model;
(b) white-box on a fake-quantised PyTorch twin (:mod:`fakequant`), replayed on the int8 model;
(c) query-only Square attack (:class:`nasctl.nas.attacks.square.Square`) run against the int8
    interpreter itself.
Every adversarial image is rounded to the uint8 pixel grid (k / 255) inside the eps-ball before
the int8 model sees it, as a camera frame would be. An image counts as robust when the model is
right on the clean image and on the adversarial one (as :func:`nasctl.nas.attacks.evaluate`). Next
to each int8 number the float PyTorch model's robust accuracy on the same images is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nasctl.nas.attacks import PGD
from nasctl.nas.attacks.square import Square

from .verify import top1_agreement, torch_logits

log = logging.getLogger(__name__)


@dataclass
class RobustnessConfig:
    eps: float  # L-inf radius on [0, 1] pixels (the data set's default, e.g. digits 0.1)
    images: int = 200  # first test images (the split is in seeded random order)
    pgd_steps: int = 20  # PGD-20, the field's standard evaluation
    pgd_restarts: int = 1
    square_queries: int = 300  # per image; bounded so the check takes seconds on a CPU
    square_p_init: float = 0.05  # the paper's L-inf setting
    seed: int = 0


def to_uint8_grid(x_adv: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """The grid image (multiples of 1/255) nearest to ``x_adv`` inside [0, 1] and the eps-ball of ``x``.

    Where no grid value lies in the ball (eps < 1/255 around an off-grid pixel) the pixel nearest
    to ``x`` on the grid is used.
    """
    lo = np.ceil(np.maximum(x - eps, 0.0) * 255.0 - 1e-4) / 255.0
    hi = np.floor(np.minimum(x + eps, 1.0) * 255.0 + 1e-4) / 255.0
    q = np.clip(np.round(np.asarray(x_adv, np.float64) * 255.0) / 255.0, lo, hi)
    empty = lo > hi
    if np.any(empty):
        q = np.where(empty, np.round(x * 255.0) / 255.0, q)
    return q.astype(np.float32)


def _pgd_attack(cfg: RobustnessConfig) -> PGD:
    """The white-box attack of (a) and (b): the project's PGD, settings from the config."""
    return PGD(eps=cfg.eps, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts)


def _pgd(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: RobustnessConfig, batch_size: int = 256
) -> np.ndarray:
    attack = _pgd_attack(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size])
        out.append(attack(model, xb, yb, gen).numpy())
    return np.concatenate(out)


def deployed_robustness(
    float_model: nn.Module,
    twin: nn.Module,
    int8_predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cfg: RobustnessConfig,
) -> dict[str, Any]:
    """Robust accuracy (percent) of the int8 model under the three attacks, and their minimum.

    ``int8_predict`` maps float32 [N, C, H, W] pixels to logits (e.g. ``TFLiteRunner.predict``).
    """
    x = np.ascontiguousarray(x[: cfg.images], dtype=np.float32)
    y = np.asarray(y[: cfg.images], dtype=np.int64)

    def float_predict(z: np.ndarray) -> np.ndarray:
        return torch_logits(float_model, z)

    int8_logits = int8_predict(x)
    int8_clean = int8_logits.argmax(1) == y
    float_clean = float_predict(x).argmax(1) == y
    twin_logits = torch_logits(twin, x)
    pgd = _pgd_attack(cfg)
    pgd_settings = {
        **{k: v for k, v in pgd.to_dict().items() if k != "model_mode"},
        "alpha": pgd.step_size,  # the step the attack really takes (its default when not set)
        "seed": cfg.seed,
    }
    attacks: dict[str, dict[str, Any]] = {}
    survived = int8_clean.copy()
    survived_float = float_clean.copy()

    def record(name: str, x_adv: np.ndarray, settings: dict, crafted_on: str, t0: float, **extra) -> None:
        nonlocal survived, survived_float
        x_adv = to_uint8_grid(x_adv, x, cfg.eps)
        int8_ok = int8_clean & (int8_predict(x_adv).argmax(1) == y)
        float_ok = float_clean & (float_predict(x_adv).argmax(1) == y)
        survived &= int8_ok
        survived_float &= float_ok
        attacks[name] = {
            "int8_robust_acc": 100.0 * float(int8_ok.mean()),
            "float_robust_acc": 100.0 * float(float_ok.mean()),
            "crafted_on": crafted_on,
            "settings": settings,
            "max_linf": float(np.abs(x_adv - x).max()),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
        log.debug(
            "robustness %s: int8 %.1f %%, float %.1f %%",
            name,
            attacks[name]["int8_robust_acc"],
            attacks[name]["float_robust_acc"],
        )

    t0 = time.perf_counter()
    record("transfer_pgd", _pgd(float_model, x, y, cfg), pgd_settings, "float PyTorch model", t0)
    t0 = time.perf_counter()
    record("fakequant_pgd", _pgd(twin, x, y, cfg), pgd_settings, "fake-quantised PyTorch twin (STE)", t0)
    t0 = time.perf_counter()
    square = Square(eps=cfg.eps, queries=cfg.square_queries, p_init=cfg.square_p_init, seed=cfg.seed)
    x_sq, queries = square.run(
        int8_predict, x, y, project=lambda cand, clean: to_uint8_grid(cand, clean, cfg.eps)
    )
    record(
        "square",
        x_sq,
        square.to_dict(),
        "int8 TFLite interpreter (queries only)",
        t0,
        mean_queries=float(queries.mean()),
        max_queries=int(queries.max()),
    )

    worst = min(attacks, key=lambda k: attacks[k]["int8_robust_acc"])
    return {
        "images": len(y),
        "split": "test",
        "eps": cfg.eps,
        "norm": "Linf",
        "pixel_grid": "uint8 (k/255), inside the eps-ball",
        "int8_clean_acc": 100.0 * float(int8_clean.mean()),
        "float_clean_acc": 100.0 * float(float_clean.mean()),
        "twin_top1_agreement_with_int8": top1_agreement(twin_logits, int8_logits),
        "attacks": attacks,
        "int8_robust_acc_min": attacks[worst]["int8_robust_acc"],
        "worst_attack": worst,
        "float_robust_acc_min": min(a["float_robust_acc"] for a in attacks.values()),
        # per image: robust only if it survives all three attacks
        "int8_robust_acc_all_attacks": 100.0 * float(survived.mean()),
        "float_robust_acc_all_attacks": 100.0 * float(survived_float.mean()),
        "config": asdict(cfg),
    }
