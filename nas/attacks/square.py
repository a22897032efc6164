"""Square Attack (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020), L-inf, untargeted.

A score-based black-box attack: it only queries the model's logits, so it runs against the int8
TFLite interpreter itself. Threat model L-inf with radius ``eps`` on pixels in [0, 1]. It starts
from vertical stripes of +-eps and, each iteration, proposes a random square window (side from the
paper's schedule of ``p``, the fraction of pixels changed, starting at ``p_init`` = 0.05) set to
+-eps per channel, keeping the proposal when the margin loss (true-class logit minus the best
other logit) goes down. An image is fooled when its margin drops below 0.

Budget: at most ``queries`` model calls per image (the official evaluation uses 10,000; exports
use a few hundred so the check takes seconds on a CPU -- the report says how many). Every
candidate goes through ``project`` before it is queried, so the caller can keep candidates on
the uint8 pixel grid inside the eps-ball.

:class:`Square` is an :class:`~nasctl.nas.attacks.Attack` like the gradient attacks (registered as
``square``, so ``make_attack("square", eps=...)`` and the registry-wide tests take it), with one more
capability: ``query_only``. :meth:`Square.run` attacks any predict function on NumPy arrays (the int8
TFLite interpreter); calling it on a PyTorch model wraps the model as such a function. Its randomness
comes from its ``seed`` setting (a NumPy generator), since the predict functions it runs on are not
PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .gradient import Attack, register_attack

Predict = Callable[[np.ndarray], np.ndarray]  # float32 [N, C, H, W] -> logits [N, K]
Project = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (candidate, clean) -> allowed image


def margin_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True-class logit minus the largest other logit; < 0 means misclassified."""
    idx = np.arange(len(labels))
    true = logits[idx, labels]
    other = logits.copy()
    other[idx, labels] = -np.inf
    return true - other.max(1)


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant fraction of pixels changed, rescaled to ``n_iters``."""
    it = int(it / max(n_iters, 1) * 10000)
    for bound, div in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
    ):
        if it <= bound:
            return p_init / div
    return p_init / 512


def clip_to_ball(candidate: np.ndarray, clean: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(np.clip(candidate, clean - eps, clean + eps), 0.0, 1.0)


@register_attack
@dataclass
class Square(Attack):
    """Square Attack: score-based, query-only (no gradients), so it also runs on an int8 interpreter."""

    name: ClassVar[str] = "square"
    query_only: ClassVar[bool] = True
    queries: int = 300  # model calls per image, including the initial one
    p_init: float = 0.05
    seed: int = 0

    def to_dict(self) -> dict:
        paper = "Andriushchenko et al., Square Attack, ECCV 2020"
        return {**super().to_dict(), "loss": "margin", "paper": paper}

    def perturb(self, model, x, y, gen):
        """On a PyTorch model: its logits as the predict function; the eps-ball and [0, 1] as projection."""

        @torch.no_grad()
        def predict(batch: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(batch).to(x.device, x.dtype)).float().cpu().numpy()

        x_adv, _ = self.run(predict, x.detach().cpu().float().numpy(), y.cpu().numpy())
        return torch.from_numpy(x_adv).to(x.device, x.dtype)

    def run(
        self, predict: Predict, x: np.ndarray, y: np.ndarray, project: Project | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Attack images ``x`` [N, C, H, W] with labels ``y``; returns (adversarial images, queries
        used per image). Images the model already misclassifies are returned unchanged."""
        rng = np.random.default_rng(self.seed)
        eps = self.eps
        project = project or (lambda cand, clean: clip_to_ball(cand, clean, eps))
        x = np.asarray(x, dtype=np.float32)
        n, c, h, w = x.shape
        margin = margin_loss(predict(x), y)
        queries = np.ones(n, dtype=np.int64)
        x_best = x.copy()
        todo = np.where(margin > 0)[0]
        if len(todo) == 0 or self.queries < 2:
            return x_best, queries
        stripes = rng.choice([-eps, eps], size=(len(todo), c, 1, w)).astype(np.float32)
        cand = project(x[todo] + stripes, x[todo])
        m = margin_loss(predict(cand), y[todo])
        queries[todo] += 1
        x_best[todo], margin[todo] = cand, m
        n_iters = self.queries - 2
        for it in range(n_iters):
            idx = np.where(margin > 0)[0]
            if len(idx) == 0:
                break
            clean, best = x[idx], x_best[idx]
            s = round(math.sqrt(p_schedule(self.p_init, it, n_iters) * h * w))
            s = min(max(s, 1), h - 1, w - 1) if min(h, w) > 1 else 1
            deltas = best - clean
            for j in range(len(idx)):
                r, col = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
                window_clean = clean[j, :, r : r + s, col : col + s]
                window_best = best[j, :, r : r + s, col : col + s]
                for _ in range(10):  # redraw a proposal that would not change the image
                    new = rng.choice([-eps, eps], size=(c, 1, 1)).astype(np.float32)
                    if np.any(np.abs(np.clip(window_clean + new, 0, 1) - window_best) > 1e-7):
                        break
                deltas[j, :, r : r + s, col : col + s] = new
            cand = project(clean + deltas, clean)
            m = margin_loss(predict(cand), y[idx])
            queries[idx] += 1
            better = m < margin[idx]
            x_best[idx[better]] = cand[better]
            margin[idx[better]] = m[better]
        return x_best, queries
