"""Attacks: the :class:`Attack` base class and its registry, the gradient attacks (FGSM, FGSM-RS, N-FGSM,
PGD, TRADES' inner maximisation) and the query-only Square attack, as torchattacks keeps its attack list
in the package's ``__init__``: importing the package registers every built-in attack.

``gradient`` holds the base, the white-box attacks and :func:`accuracy_under_attack` (the one place a
number under attack is counted), ``square`` the query-only one (also run on any logits function: the int8
interpreter in export), ``autoattack`` the wrapper of ``pyautoattack`` that scores what ships. A new
attack is a module beside them with ``@register_attack`` and one import line here.
"""

from .gradient import (
    ATTACKS,
    FGSM,
    FGSMRS,
    NFGSM,
    PGD,
    Attack,
    RobustResult,
    TRADESAttack,
    accuracy_under_attack,
    make_attack,
    register_attack,
    trades_loss,
    training_attacks,
)
from .square import Square

__all__ = [
    "ATTACKS", "FGSM", "FGSMRS", "NFGSM", "PGD", "Attack", "RobustResult", "Square", "TRADESAttack",
    "accuracy_under_attack", "make_attack", "register_attack", "trades_loss", "training_attacks",
]
