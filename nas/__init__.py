"""The search side of nasctl: data sets, the search space, the weight-sharing supernet, attacks,
adversarial training, the NSGA-II search and its reports.

Modules, one job each: ``data`` (data sets and splits), ``space`` (blocks, genomes, spaces, costs),
``supernet`` (slim supernet, ``extract``, BN recalibration), ``attacks`` (FGSM family, PGD, TRADES),
``train`` (``nasctl train``), ``checkpoint`` (atomic, self-describing checkpoints), ``candidates``
(candidate accuracy), ``objectives``, ``search`` (pymoo problem and driver), ``search_run`` (a whole
``nasctl search`` run), ``report`` (front, plots, layer statistics), ``select`` (picking subnets
from a run), ``robust_eval`` (``nasctl eval``), ``finetune`` (stand-alone subnet training),
``runs`` (run folders and config merging), ``errors``.
"""

from .attacks import PGD, evaluate, make_attack
from .checkpoint import load_supernet
from .data import load_dataset
from .errors import NasctlError
from .search import SearchConfig
from .search_run import resume_search, search
from .space import Genome, SearchSpace, load_space
from .supernet import Subnet, Supernet, recalibrate_bn
from .train import TrainConfig, resume_training, train_supernet

__all__ = [
    "PGD", "Genome", "NasctlError", "SearchConfig", "SearchSpace", "Subnet", "Supernet", "TrainConfig",
    "evaluate", "load_dataset", "load_space", "load_supernet", "make_attack", "recalibrate_bn",
    "resume_search", "resume_training", "search", "train_supernet",
]
