"""AutoAttack (Croce & Hein 2020) on a model, through the ``pyautoattack`` package.

PGD with a fixed step can overstate robustness (on Fashion-MNIST published PGD numbers lie 11-22 points
above AutoAttack at eps 0.3); AutoAttack's parameter-free ensemble is the number a robustness claim is
judged by. Two versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square: the benchmark's protocol) and
``apgd`` (APGD-CE then APGD-T only, with the standard version's settings: the two gradient attacks that
find almost every adversarial example the full ensemble finds, at a fraction of Square's 5,000 queries --
named as such wherever its number is shown).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from nasctl.errors import NasctlError

from ..data import TensorSplit

log = logging.getLogger(__name__)

AA_VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "apgd": ("apgd-ce", "apgd-t"),
}
AA_LABELS = {"standard": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)",
             "apgd": "AutoAttack APGD-CE + APGD-T"}
# a fine-tuned member's AutoAttack accuracy this far below its PGD accuracy means PGD overstated it
AA_GAP_WARN = 3.0


def pgd_overstates(pgd_acc: float, aa_acc: float | None) -> bool:
    """PGD's accuracy lies more than :data:`AA_GAP_WARN` points above AutoAttack's (None: not attacked)."""
    return aa_acc is not None and pgd_acc - aa_acc > AA_GAP_WARN


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """``logger`` at WARNING for the block, then as it was: pyautoattack's info lines are not nasctl's."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_version(version: str, flag: str = "--autoattack") -> None:
    """``version`` is one of :data:`AA_VERSIONS` or ``off``."""
    if version != "off" and version not in AA_VERSIONS:
        raise NasctlError(f"{flag} must be one of {', '.join([*AA_VERSIONS, 'off'])}, got {version!r}")


def autoattack_accuracy(model: torch.nn.Module, split: TensorSplit, eps: float, seed: int = 0,
                        version: str = "standard", batch_size: int = 256) -> dict[str, Any]:
    """Robust accuracy (%) of ``model`` in eval mode under AutoAttack ``version`` on every image of
    ``split``: an image counts when the model still classifies the attacked image correctly."""
    check_version(version)
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise NasctlError("AutoAttack needs the pyautoattack package: pip install pyautoattack (it is in "
                          "nasctl's install), or turn it off (--autoattack off)") from e
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y = split.batches(len(split)).__next__()
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        classes = int(model(x[:1]).shape[1])
    with _quiet(logging.getLogger("auto-attack")):  # it logs "setting parameters for standard version"
        adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", seed=seed,
                               device=device)
    adversary.attacks_to_run = list(AA_VERSIONS[version])
    # the targeted attacks aim at the 9 most likely wrong classes; fewer classes have fewer targets
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, classes - 1)
    if classes < 3:  # APGD-T and FAB-T need a target besides the true and the top class
        adversary.attacks_to_run = [a for a in adversary.attacks_to_run if not a.endswith("-t")]
    state = torch.get_rng_state()  # AutoAttack seeds torch's global generator: leave it as it was
    t0 = time.perf_counter()
    try:
        x_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        if isinstance(x_adv, (tuple, list)):  # pyautoattack returns (x_adv, y_adv)
            x_adv = x_adv[0]
        with torch.no_grad():
            acc = 100.0 * float((model(x_adv.to(device)).argmax(1) == y).float().mean())
    finally:
        torch.set_rng_state(state)
        model.train(was_training)
    return {"acc": acc, "version": version, "attack": AA_LABELS[version],
            "attacks": list(adversary.attacks_to_run), "norm": "Linf", "eps": float(eps), "seed": seed,
            "images": len(y), "seconds": time.perf_counter() - t0}
