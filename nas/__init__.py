"""The search side of nasctl: data sets, the search space, the weight-sharing supernet, attacks,
adversarial training, the NSGA-II search and its reports.

Subpackages, low to high (each imports only those before it; ``tests/test_layers.py`` enforces it):
``data`` (data sets and splits), ``space`` (blocks, genomes, spaces, costs), ``supernet`` (slim
supernet, ``extract``, the one BN preparation, checkpoints), ``attacks`` (FGSM family, PGD, TRADES,
Square, AutoAttack, the one ``accuracy_under_attack``), ``training`` (the supernet trainer, the static
subnet trainer and its recipes, the optimiser), ``search`` (objectives, the pymoo problem, algorithms,
archive, front, candidate evaluation, config and driver), ``render`` (``pareto.json``, the summary, the
plots), ``runs`` (a whole ``nasctl search`` run, ``finetune``, ``eval``, picking members of a run),
``experiments`` (the method's studies), and on top ``report`` (``nasctl report``'s page). Run folders,
config merging and :class:`NasctlError` live in the ground layer (``nasctl.runfolder``,
``nasctl.config``, ``nasctl.errors``); the error is re-exported here.

Names resolve lazily (PEP 562): ``nasctl.nas`` must not pull torch in when a command only needs a
name or two (``nasctl devices`` needs no torch).
"""

import importlib

_EXPORTS = {
    "attacks": ("PGD", "accuracy_under_attack", "make_attack"),
    "supernet.checkpoint": ("load_supernet",),
    "data": ("load_dataset",),
    "nasctl.errors": ("NasctlError",),
    "search": ("SearchConfig",),
    "runs.search": ("resume_search", "run_search"),
    "space": ("Genome", "SearchSpace", "load_space"),
    "supernet": ("Subnet", "Supernet", "prepare_subnet"),
    "training.supernet": ("TrainConfig", "resume_training", "train_supernet"),
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
