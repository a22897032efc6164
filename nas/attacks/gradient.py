"""The attack base class and registry, and the gradient L-infinity attacks (FGSM family, PGD) on
models that take pixels in [0, 1], and the TRADES training loss.

Each attack is a small class with its settings as fields (``to_dict()`` goes into results); the base
class runs the model in eval mode by default, keeps the adversarial image inside both the
epsilon-ball and [0, 1], and restores the model's train/eval state afterwards. Randomness comes
from a ``torch.Generator`` handed in by the caller, never from the global seed.

Training uses ``model_mode="train"`` (BatchNorm on batch statistics): a weight-sharing supernet's
running statistics are a mixture over all paths and would make the inner maximisation weaker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

ATTACKS: dict[str, type["Attack"]] = {}


def register_attack(cls: type["Attack"]) -> type["Attack"]:
    ATTACKS[cls.name] = cls
    return cls


def _uniform(shape_like: torch.Tensor, low: float, high: float, gen: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape_like.shape, generator=gen, device="cpu" if gen is None else gen.device,
                   dtype=shape_like.dtype).to(shape_like.device)
    return low + (high - low) * u


@dataclass
class Attack:
    """Base: threat model L-inf, budget ``eps`` on pixels in [0, 1].

    Capabilities live on the class, so training and evaluation ask the registry instead of branching
    on names: ``trainable`` (offered by ``nasctl train --attack``), ``single_step`` (one gradient per
    example: fast, and prone to catastrophic overfitting, so training checks PGD accuracy every epoch),
    ``train_step`` (the step size adversarial training uses, as a fraction of eps; None: the attack's
    own default), ``needs_clean_logits``, ``query_only`` (logits alone, no gradients: it also runs on
    an int8 interpreter, and it cannot be fooled by masked gradients) and :meth:`training_loss`.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    single_step: ClassVar[bool] = False
    train_step: ClassVar[float | None] = None
    needs_clean_logits: ClassVar[bool] = False  # the training loss also uses the clean batch's logits
    query_only: ClassVar[bool] = False
    eps: float = 8 / 255
    model_mode: str = "eval"  # "eval" for evaluation; "train" inside adversarial training

    @classmethod
    def settings(cls) -> set[str]:
        """The names of the settings this attack takes."""
        return {f.name for f in fields(cls)}

    @classmethod
    def for_training(cls, eps: float, steps: int, alpha: float | None = None, beta: float | None = None
                     ) -> "Attack":
        """This attack as adversarial training runs it: ``model_mode="train"``, step ``train_step * eps``
        unless ``alpha`` is given; ``steps`` and ``beta`` where the attack has them."""
        if alpha is None and cls.train_step is not None:
            alpha = cls.train_step * eps
        offered = {"steps": steps, "alpha": alpha, "beta": beta}
        return cls(eps=eps, model_mode="train",
                   **{k: v for k, v in offered.items() if k in cls.settings() and v is not None})

    def training_loss(self, adv_logits: torch.Tensor, y: torch.Tensor,
                      clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The loss adversarial training minimises: cross-entropy on the adversarial batch."""
        return F.cross_entropy(adv_logits, y)

    def to_dict(self) -> dict:
        return {"attack": self.name, "norm": "Linf", **{k: v for k, v in asdict(self).items()}}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        was_training = model.training
        model.train(self.model_mode == "train")
        req = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            with torch.enable_grad():
                x_adv = self.perturb(model, x.detach(), y, gen)
        finally:
            for p, r in zip(model.parameters(), req):
                p.requires_grad_(r)
            model.train(was_training)
        return x_adv.detach()

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.min(torch.max(x_adv, x - self.eps), x + self.eps), 0.0, 1.0)


def _grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x), x)
    return g


@register_attack
@dataclass
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size eps from x."""

    name: ClassVar[str] = "fgsm"

    def perturb(self, model, x, y, gen):
        g = _grad(lambda z: F.cross_entropy(model(z), y), x)
        return self._project(x + self.eps * g.sign(), x)


@register_attack
@dataclass
class FGSMRS(Attack):
    """FGSM with random start (Wong et al., 2020, "Fast is better than free"): uniform start in the
    eps-ball, one step of ``alpha`` (default 1.25 eps), projected back to the ball."""

    name: ClassVar[str] = "fgsm-rs"
    trainable: ClassVar[bool] = True
    single_step: ClassVar[bool] = True
    alpha: float | None = None

    def perturb(self, model, x, y, gen):
        alpha = 1.25 * self.eps if self.alpha is None else self.alpha
        x0 = torch.clamp(x + _uniform(x, -self.eps, self.eps, gen), 0, 1)
        g = _grad(lambda z: F.cross_entropy(model(z), y), x0)
        return self._project(x0 + alpha * g.sign(), x)


@register_attack
@dataclass
class NFGSM(Attack):
    """N-FGSM (de Jorge et al., 2022): noise from [-k eps, k eps] (k=2), one step of eps, and no
    projection back to the eps-ball (only to [0, 1]); avoids catastrophic overfitting at no cost."""

    name: ClassVar[str] = "n-fgsm"
    trainable: ClassVar[bool] = True
    single_step: ClassVar[bool] = True
    noise_mult: float = 2.0

    def perturb(self, model, x, y, gen):
        k = self.noise_mult * self.eps
        x0 = torch.clamp(x + _uniform(x, -k, k, gen), 0, 1)
        g = _grad(lambda z: F.cross_entropy(model(z), y), x0)
        return torch.clamp(x0 + self.eps * g.sign(), 0, 1)


@register_attack
@dataclass
class PGD(Attack):
    """Projected gradient descent on cross-entropy (Madry et al., 2018), L-inf, random start.

    With ``restarts`` > 1 the worst case per example over all restarts is kept (an example counts
    as robust only if every restart fails). ``alpha`` defaults to 2.5 eps / steps.
    """

    name: ClassVar[str] = "pgd"
    trainable: ClassVar[bool] = True
    train_step: ClassVar[float | None] = 0.25  # Madry's PGD-7 with step eps/4
    steps: int = 10
    alpha: float | None = None
    restarts: int = 1
    random_start: bool = True

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)

    def perturb(self, model, x, y, gen):
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(max(self.restarts, 1)):
            x_adv = self._one_run(model, x, y, gen)
            with torch.no_grad():
                wrong = model(x_adv).argmax(1) != y
            best[~fooled] = x_adv[~fooled]  # fooled examples keep the image that fooled them
            fooled |= wrong
            if bool(fooled.all()):
                break
        return best

    def _one_run(self, model, x, y, gen):
        if self.eps == 0:
            return x.clone()
        x_adv = (torch.clamp(x + _uniform(x, -self.eps, self.eps, gen), 0, 1) if self.random_start
                 else x.clone())
        for _ in range(self.steps):
            g = _grad(lambda z: F.cross_entropy(model(z), y), x_adv)
            x_adv = self._project(x_adv + self.step_size * g.sign(), x)
        return x_adv


@register_attack
@dataclass
class TRADESAttack(Attack):
    """The inner maximisation of TRADES (Zhang et al., 2019): PGD on KL(f(x) || f(x'))
    from a small Gaussian start (0.001)."""

    name: ClassVar[str] = "trades"
    trainable: ClassVar[bool] = True
    train_step: ClassVar[float | None] = 0.25
    needs_clean_logits: ClassVar[bool] = True
    steps: int = 10
    alpha: float | None = None
    beta: float = 6.0  # weight of the robust KL term in the training loss

    def perturb(self, model, x, y, gen):
        alpha = self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=gen, device="cpu" if gen is None else gen.device).to(x.device)
        x_adv = torch.clamp(x + 0.001 * noise, 0, 1)
        for _ in range(self.steps):
            g = _grad(lambda z: F.kl_div(F.log_softmax(model(z), dim=1), p_clean, reduction="sum"), x_adv)
            x_adv = self._project(x_adv + alpha * g.sign(), x)
        return x_adv


    def training_loss(self, adv_logits, y, clean_logits=None):
        """CE(clean) + beta * KL(f(x) || f(x')): TRADES trains on the clean logits too."""
        return trades_loss(clean_logits, adv_logits, y, self.beta)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """CE(clean) + beta * KL(f(x) || f(x')) averaged over the batch (TRADES training objective)."""
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * kl


def make_attack(name: str, **settings) -> Attack:
    """An attack from the registry by name. A setting the attack does not take is an error, not
    silently dropped: a typo or a setting meant for another attack must not change what is measured."""
    from nasctl.core import did_you_mean
    from nasctl.errors import NasctlError

    if name not in ATTACKS:
        raise NasctlError(f"unknown attack {name!r}{did_you_mean(name, ATTACKS)}; choose one of "
                          f"{', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    unknown = sorted(set(settings) - cls.settings())
    if unknown:
        raise NasctlError(f"attack {name!r} takes no setting {', '.join(map(repr, unknown))}"
                          f"{did_you_mean(unknown[0], cls.settings())}; it takes "
                          f"{', '.join(sorted(cls.settings()))}")
    return cls(**{k: v for k, v in settings.items() if v is not None})


def training_attacks() -> list[str]:
    """Names of the attacks ``nasctl train --attack`` offers (the registry's trainable ones)."""
    return [n for n, cls in ATTACKS.items() if cls.trainable]


@dataclass
class RobustResult:
    clean_acc: float  # percent
    adv_acc: float  # percent, under ``attack``
    n: int
    attack: dict = field(default_factory=dict)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def accuracy_under_attack(model: nn.Module, data, attack: Attack | None,
                          device: torch.device | str | None = None, gen: torch.Generator | None = None, *,
                          seed: int | None = None, batch_size: int = 256) -> RobustResult:
    """Clean and adversarial top-1 accuracy (percent) of ``model`` in eval mode: the one place every
    number under attack is counted (search candidates, the final front, fine-tuning's epoch choice,
    ``nasctl eval``, the benchmarks), so robust = correct on both the clean and the attacked image
    everywhere.

    ``data``: a split (anything with ``batches(batch_size)``: :class:`~nasctl.nas.data.TensorSplit`) or an
    iterable of ``(x, y)`` batches. ``device``: where the batches go, by default the model's own. The
    attack's random start comes from ``gen``, or from a new generator seeded with ``seed``; with
    neither, from torch's global generator. ``attack=None`` counts clean accuracy only (``adv_acc`` nan).
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if gen is None and seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    batches = data.batches(batch_size) if hasattr(data, "batches") else data
    was_training = model.training
    model.eval()
    n = clean = adv = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            ok = _correct(model, x, y)
            clean += int(ok.sum())
            if attack is not None:
                x_adv = attack(model, x, y, gen)
                adv += int((_correct(model, x_adv, y) & ok).sum())  # robust = correct on x and x_adv
            n += len(y)
    finally:
        model.train(was_training)
    return RobustResult(100.0 * clean / max(n, 1), 100.0 * adv / max(n, 1) if attack else float("nan"), n,
                        attack.to_dict() if attack else {})

