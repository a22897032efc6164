"""The runs layer: whole jobs in their run folders, each built from the layers below it.

``search`` (a ``nasctl search`` run: train first, search, final evaluation, fine-tune stage, outputs,
resume), ``finetune`` (``nasctl finetune`` and the fine-tune stage's members), ``eval`` (``nasctl eval``:
the strong protocol), ``select`` (picking a member of a finished run: ``--run RUN --pick knee``).

The functions named like their modules (``search.search``, ``finetune.finetune``) are reached by their
module: a package attribute cannot be both. Names resolve lazily (PEP 562): picking a member (``select``)
needs no torch, so this package must not import the search run when a command only reads a front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .eval import EvalConfig, evaluate_subnets
    from .finetune import spread_picks
    from .search import resume_search
    from .select import latest_run, pick_from_run, read_front

_EXPORTS = {
    "eval": ("EvalConfig", "evaluate_subnets"),
    "finetune": ("spread_picks",),
    "search": ("resume_search",),
    "select": ("latest_run", "pick_from_run", "read_front"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["EvalConfig", "evaluate_subnets", "latest_run", "pick_from_run", "read_front", "resume_search",
           "spread_picks"]
assert set(__all__) == set(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
