"""The search side of nasctl: data sets, the search space, the weight-sharing supernet, attacks,
adversarial training, the NSGA-II search and its reports.

Subpackages, low to high: ``data`` (data sets and splits), ``space`` (blocks, genomes, spaces, costs),
``supernet`` (slim supernet, ``extract``, BN recalibration, checkpoints), ``attacks`` (FGSM family, PGD,
TRADES, Square), ``search`` (objectives, the pymoo problem, algorithms, archive, front, config and
driver). Modules: ``train`` (``nasctl train``), ``candidates`` (candidate accuracy), ``search_run`` (a
whole ``nasctl search`` run), ``report`` (front, plots, layer statistics), ``select`` (picking subnets
from a run), ``robust_eval`` (``nasctl eval``), ``finetune`` (stand-alone subnet training). Run folders,
config merging and :class:`NasctlError` live in the ground layer (``nasctl.runfolder``,
``nasctl.config``, ``nasctl.errors``); the error is re-exported here.

Names resolve lazily (PEP 562): ``nasctl.nas`` must not pull torch in when a command only needs a
name or two (``nasctl devices`` needs no torch).
"""

import importlib

_EXPORTS = {
    "attacks": ("PGD", "evaluate", "make_attack"),
    "supernet.checkpoint": ("load_supernet",),
    "data": ("load_dataset",),
    "nasctl.errors": ("NasctlError",),
    "search": ("SearchConfig",),
    "search_run": ("resume_search", "run_search"),
    "space": ("Genome", "SearchSpace", "load_space"),
    "supernet": ("Subnet", "Supernet", "recalibrate_bn"),
    "train": ("TrainConfig", "resume_training", "train_supernet"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_RENAMED = {"run_search": "search"}  # not ``search``: that name is the submodule
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        where = _WHERE[name]
        module = importlib.import_module(where if where.startswith("nasctl.") else f".{where}", __name__)
        return getattr(module, _RENAMED.get(name, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
