"""NSGA-II search over subnets with inherited weights (``nasctl search``): its config and its driver.

The parts: :mod:`.problem` (the pymoo problem and the evaluation cache), :mod:`.algorithms` (NSGA-II,
random), :mod:`.archive` (every evaluation on disk), :mod:`.front` (pure functions on records).

pymoo drives the search (categorical genes: a ``Choice`` for each layer's block and width, uniform
crossover, random-choice mutation, duplicates removed by genome string) through its ask/tell
interface; this module only supplies the evaluations. Every evaluated candidate is appended to
``archive.jsonl`` as soon as it finishes. Resuming re-runs the algorithm from the same seed and
answers every candidate already in the archive from it -- evaluations are deterministic per genome
(see :mod:`.candidates`), so the resumed run retraces the uninterrupted one exactly, with no pickled
algorithm state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nasctl.config import check_at_least_one, check_eps
from nasctl.core import did_you_mean
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder
from nasctl.workers import parse_workers

from ..attacks.autoattack import check_version
from ..data import dataset_spec
from ..data.userdata import is_user_spec
from ..space import check_width
from . import front as front_mod
from .algorithms import ALGORITHMS
from .front import HV_REFERENCE
from .objectives import DEFAULT_OBJECTIVES, parse_objectives
from .problem import SearchState

log = logging.getLogger(__name__)

# which fine-tuned members AutoAttack scores (SearchConfig.finetune_autoattack_scope)
AA_SCOPES = ("up-to-knee", "all")


class LatencyProvider(Protocol):
    """Where the search's ``latency_ms`` comes from, handed in by the caller (the CLI and ``nasctl.search``
    pass :class:`nasctl.profiling.LatencySources`): the search sits below profiling and never imports it.

    ``check`` refuses a bad ``--latency-source`` before any work; ``open`` binds the source to the
    run's space and input shape once the supernet is loaded, and returns a callable ``genome -> ms``
    with ``spec`` (kind, device, precision, threads; ``describe()``), ``provenance`` and, for the
    latency check, ``measure_many(genomes)``.
    """

    def check(self, spec: str, precision: str, threads: int) -> None: ...

    def open(self, spec: str, store: str, space: Any, info: Any, precision: str, threads: int) -> Any: ...


def check_latency_provider(cfg: SearchConfig, latency: LatencyProvider | None) -> None:
    """A run with ``latency_source`` needs a provider, and the provider accepts the spec."""
    if not cfg.latency_source:
        return
    if latency is None:
        raise NasctlError(f"latency_source {cfg.latency_source!r} needs a latency provider: pass "
                          f"latency=nasctl.profiling.LatencySources() (the CLI and nasctl.search() do)")
    latency.check(cfg.latency_source, cfg.latency_precision, cfg.latency_threads)


@dataclass
class SearchConfig(RunFolder):
    supernet: str | None = None  # trained supernet checkpoint; None: train one first (data set defaults)
    dataset: str = "digits"
    data_dir: str | None = None
    space: str | None = None  # supernet trained first; with --supernet: must match it
    width_mult: float | None = None  # supernet trained first (default 1.0); with --supernet: must match it
    epochs: int | None = None  # supernet training epochs when training first (None: training default)
    # any other setting of the supernet trained first (a TrainConfig field: attack, sampling, eps, lr, ...),
    # e.g. ``train: {attack: trades, sampling: sandwich}`` in a --config file; refused with --supernet
    train: dict[str, Any] | None = None
    algorithm: str = "nsga2"  # nsga2 | random (the baseline at the same evaluation budget)
    objectives: str = ",".join(DEFAULT_OBJECTIVES)
    pop_size: int = 20
    generations: int = 10
    mutation_genes: float = 2.0  # genes redrawn per offspring (pymoo default: 1); see make_nsga2
    max_params: int | None = None  # constraint
    max_latency_ms: float | None = None  # constraint (needs a latency source)
    # where latency_ms comes from: lut:host (the host's calibrated lookup table, nasctl profile --build-lut)
    # or measure:host (every candidate converted and timed); None: no latency (objective and constraint
    # refused)
    latency_source: str | None = None
    latency_precision: str = "int8"  # int8 | float32 TFLite, as exported
    latency_threads: int = 1
    # after the search, time every front member of a lut: source for real (measured_latency_ms beside the
    # prediction, latency_violation against max_latency_ms); measure: sources are measured already
    check_latency: bool = True
    store: str | None = None  # measurement store (default: the user's cache directory)
    min_clean_acc: float | None = None  # constraint, percent
    eps: float | None = None  # None: the eps the supernet was trained with
    pgd_steps: int = 10  # search-time proxy attack
    val_size: int = 200
    calib_batches: int = 4
    final_steps: int = 20  # final evaluation of the front on the test split
    final_restarts: int = 3
    test_size: int | None = None  # score the front (and fine-tuned members) on the first N test images
    # fine-tune stage: K front members spread over log(params), the knee among them, each trained on its
    # own (the supernet's recipe) and scored with the final attack; 0 turns it off
    finetune_members: int = 6
    finetune_epochs: int = 40
    # which epoch each member keeps: the best on the validation split by the search's PGD (scored every
    # finetune_select_every epochs), or the last; finetune_patience epochs without a better one stop it
    finetune_select: str = "best"
    finetune_select_every: int = 4
    finetune_patience: int | None = 12
    # the clean/robust trade-off (training/subnet.py TRADEOFFS): each member is fine-tuned once per entry, the
    # first filling finetuned_*, every one in finetuned_tradeoffs. Default robust alone: on the main job it
    # beats every baseline of bench/bench_baselines.py under both recipes, and "robust,accurate" doubles the
    # stage's cost for entries that were no better on the front (BENCHMARKS.md, issue 22)
    finetune_tradeoff: str = "robust"
    # AutoAttack on each fine-tuned entry, on the same test images: standard | apgd (APGD-CE + APGD-T) | off
    finetune_autoattack: str = "apgd"
    # which fine-tuned members get it: up-to-knee (the knee and every member no larger) | all. The largest
    # members cost the most to attack (73 s of the stage's 178 s of AutoAttack for the 204 K member of the
    # main job) and compete with no hand-designed net
    finetune_autoattack_scope: str = "up-to-knee"
    seed: int = 0
    device: str = "auto"
    # worker processes for the independent items after supernet training (a generation's new candidates,
    # the front's final evaluation, the fine-tune stage's members): auto = the GPUs visible times
    # workers_per_gpu, or on a CPU the cores this process may use, each worker one thread; 1 = in this
    # process. Results are written in the serial order (nasctl/workers.py)
    workers: int | str = "auto"
    workers_per_gpu: int = 1

    def validate(self) -> None:
        parse_objectives(self.objectives)
        self.workers = parse_workers(self.workers)
        if self.workers_per_gpu < 1:
            raise NasctlError(f"--workers-per-gpu must be >= 1, got {self.workers_per_gpu}")
        if self.algorithm not in ALGORITHMS:
            hint = did_you_mean(self.algorithm, ALGORITHMS)
            raise NasctlError(f"unknown --algorithm {self.algorithm!r}{hint} (choose "
                              f"{' or '.join(ALGORITHMS)})")
        if self.pop_size < 2 or self.generations < 1:
            raise NasctlError(f"--pop-size must be >= 2 and --generations >= 1 (got {self.pop_size}, "
                              f"{self.generations})")
        if not self.mutation_genes > 0:
            raise NasctlError(f"--mutation-genes must be > 0 (got {self.mutation_genes}): it is the expected "
                              f"number of genes redrawn per offspring; 2 is the default")
        wants = [w for w, on in (("objective latency_ms", "latency_ms" in parse_objectives(self.objectives)),
                                 ("--max-latency-ms", self.max_latency_ms is not None)) if on]
        if wants and not self.latency_source:
            raise NasctlError(f"{' and '.join(wants)} need(s) a latency source: add --latency-source "
                              f"lut:host (build the table first: nasctl profile --build-lut --space SPACE "
                              f"--device host "
                              f"--int8) or --latency-source measure:host")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise NasctlError(f"--max-latency-ms must be > 0, got {self.max_latency_ms}")
        if is_user_spec(self.dataset):  # a user's images: stored with an absolute path, options in order
            self.dataset = dataset_spec(self.dataset)
        check_eps(self.eps, " (leave it out to use the supernet's training eps)")
        check_width(self.width_mult)
        if self.train and self.supernet:
            raise NasctlError("the 'train' settings configure the supernet trained first: leave them out "
                              "when --supernet is given")
        if self.supernet is None:  # the supernet trained first: its settings, and that it fits in memory
            self.train_config()
        check_at_least_one(self, {
            "val_size": "validation images per candidate", "pgd_steps": "search-time PGD steps",
            "calib_batches": "BatchNorm calibration batches", "final_steps": "final PGD steps",
            "final_restarts": "final PGD restarts", "epochs": "supernet training epochs",
            "max_params": "the parameter budget", "test_size": "test images"})
        if self.finetune_members < 0 or self.finetune_epochs < 1:
            raise NasctlError(f"--finetune-members must be >= 0 (0: no fine-tune stage) and "
                              f"--finetune-epochs >= 1 (got {self.finetune_members}, {self.finetune_epochs})")
        self.finetune_config().selection().validate("finetune-")
        self.tradeoffs()
        check_version(self.finetune_autoattack, "--finetune-autoattack")
        if self.finetune_autoattack_scope not in AA_SCOPES:
            raise NasctlError(f"--finetune-autoattack-scope must be one of {', '.join(AA_SCOPES)}, got "
                              f"{self.finetune_autoattack_scope!r}")
        if self.min_clean_acc is not None and not 0 <= self.min_clean_acc <= 100:
            raise NasctlError(f"--min-clean-acc is a percentage: it must be in [0, 100], got "
                              f"{self.min_clean_acc}")

    def finetune_config(self):
        """The fine-tune stage's :class:`FinetuneConfig`: its epochs and epoch selection, the run's final
        attack and seed, and the search's own validation attack for choosing the epoch."""
        from ..training.subnet import FinetuneConfig

        return FinetuneConfig(epochs=self.finetune_epochs, final_steps=self.final_steps,
                              final_restarts=self.final_restarts, select=self.finetune_select,
                              select_every=self.finetune_select_every, patience=self.finetune_patience,
                              select_val_size=self.val_size, select_pgd_steps=self.pgd_steps,
                              autoattack=self.finetune_autoattack, seed=self.seed)

    def tradeoffs(self) -> list[str]:
        """The fine-tune stage's trade-off recipes, checked, in order (the first fills ``finetuned_*``)."""
        from ..training.subnet import parse_tradeoffs

        return parse_tradeoffs(self.finetune_tradeoff, "--finetune-tradeoff")

    # settings the search passes to the supernet it trains first; in 'train' they would contradict it
    SHARED_WITH_TRAINING = ("dataset", "data_dir", "space", "width_mult", "epochs", "seed", "device")

    def train_config(self):
        """The :class:`TrainConfig` of the supernet this search trains first (type-checked, validated)."""
        from nasctl.config import build_config

        from ..training.supernet import TrainConfig

        extra = dict(self.train or {})
        clash = [k for k in extra if k in self.SHARED_WITH_TRAINING]
        if clash:
            flag = clash[0].replace("_", "-")
            raise NasctlError(f"set {', '.join(clash)} on the search itself (--{flag}), "
                              f"not under 'train': the search and its supernet share them")
        shared = {"dataset": self.dataset, "data_dir": self.data_dir, "space": self.space, "seed": self.seed,
                  "device": self.device, "epochs": self.epochs, "width_mult": self.width_mult}
        values = {**{k: v for k, v in shared.items() if v is not None}, **extra}
        return build_config(TrainConfig, values, "the search config's 'train' settings")

    def constraints(self) -> dict[str, float]:
        """The constraints this run searches under, by flag name (for messages and the summary)."""
        names = ("max_params", "min_clean_acc", "max_latency_ms")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class GenerationStats:
    generation: int
    evaluations: int  # distinct candidates evaluated so far
    hypervolume: float
    best: dict[str, float]  # best raw value of each objective so far, feasible candidates only ({}: none)
    seconds: float


class SearchCallbacks:
    """Hooks for progress display (the CLI draws the bar); library code only calls these."""

    def on_generation(self, stats: GenerationStats, total: int) -> None: ...
    def on_evaluation(self, record: dict[str, Any]) -> None: ...


# --- front analysis (pure functions in .front, with this run's objectives, scale and constraints) ---
def nondominated(state: SearchState, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return front_mod.nondominated(recs, state.objectives, state.scale, state.cfg.constraints())


def hypervolume(state: SearchState, front: list[dict[str, Any]]) -> float:
    return front_mod.hypervolume(front, state.objectives, state.scale)


def best_values(state: SearchState, recs: list[dict[str, Any]]) -> dict[str, float]:
    return front_mod.best_values(recs, state.objectives, state.cfg.constraints())


# --- the driver -----------------------------------------------------------------------------
@dataclass
class SearchResult:
    front: list[dict[str, Any]]
    history: list[GenerationStats] = field(default_factory=list)
    evaluations: int = 0


def run_generations(state: SearchState, cfg: SearchConfig, history_path: Path | None = None) -> SearchResult:
    """Run NSGA-II (or the random baseline) for ``cfg.generations`` generations of ``cfg.pop_size``."""
    history: list[GenerationStats] = []
    t0 = time.perf_counter()

    def end_generation(gen: int) -> None:
        # only what was evaluated up to this generation: after a resume the archive already holds
        # later generations, and the history must read exactly as in an uninterrupted run
        recs = [r for r in state.archive.records.values() if r["generation"] <= gen]
        front = nondominated(state, recs)
        st = GenerationStats(gen, len(recs), hypervolume(state, front), best_values(state, recs),
                             time.perf_counter() - t0)
        history.append(st)
        if history_path is not None:
            from nasctl.core import atomic_write_json

            atomic_write_json(history_path, {"reference_point": HV_REFERENCE,
                                             "objectives": list(state.objectives),
                                             "scale": state.scale,
                                             "generations": [asdict(h) for h in history]})
        state.cb.on_generation(st, cfg.generations)

    ALGORITHMS[cfg.algorithm](state, cfg, end_generation)
    front = nondominated(state, list(state.archive.records.values()))
    return SearchResult(front, history, len(state.archive))
