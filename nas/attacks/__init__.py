"""Attacks: the :class:`Attack` base class and its registry, the gradient attacks (FGSM, FGSM-RS, N-FGSM,
PGD, TRADES' inner maximisation) and the query-only Square attack, as torchattacks keeps its attack list
in the package's ``__init__``: importing the package registers every built-in attack.

``gradient`` holds the base and the white-box attacks, ``square`` the query-only one (also run on any
logits function: the int8 interpreter in export). A new attack is a module beside them with
``@register_attack`` and one import line here.
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
    evaluate,
    make_attack,
    register_attack,
    trades_loss,
    training_attacks,
)
from .square import Square

__all__ = [
    "ATTACKS", "FGSM", "FGSMRS", "NFGSM", "PGD", "Attack", "RobustResult", "Square", "TRADESAttack",
    "evaluate", "make_attack", "register_attack", "trades_loss", "training_attacks",
]
