"""NSGA-II search over subnets with inherited weights (``nasctl search``), crash-safe and resumable.

pymoo drives the search (categorical genes: a ``Choice`` for each layer's block and width, uniform
crossover, random-choice mutation, duplicates removed by genome string) through its ask/tell
interface; this module only supplies the evaluations. Every evaluated candidate is appended to
``archive.jsonl`` as soon as it finishes. Resuming re-runs the algorithm from the same seed and
answers every candidate already in the archive from it -- evaluations are deterministic per genome
(see :mod:`.evaluate`), so the resumed run retraces the uninterrupted one exactly, with no pickled
algorithm state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nasctl.core import did_you_mean

from . import front as front_mod
from .archive import Archive
from .errors import NasctlError
from .front import HV_REFERENCE
from .objectives import COST_OBJECTIVES, DEFAULT_OBJECTIVES, minimised, parse_objectives
from .runs import check_at_least_one, check_eps
from .space import Genome, SearchSpace

log = logging.getLogger(__name__)



@dataclass
class SearchConfig:
    supernet: str | None = None  # trained supernet checkpoint; None: train one first (data set defaults)
    dataset: str = "digits"
    data_dir: str | None = None
    space: str | None = None  # supernet trained first; with --supernet: must match it
    width_mult: float | None = None  # supernet trained first (default 1.0); with --supernet: must match it
    epochs: int | None = None  # supernet training epochs when training first (None: training default)
    algorithm: str = "nsga2"  # nsga2 | random (the baseline at the same evaluation budget)
    objectives: str = ",".join(DEFAULT_OBJECTIVES)
    pop_size: int = 20
    generations: int = 10
    mutation_genes: float = 2.0  # expected genes redrawn per offspring (pymoo's default: 1); see _make_nsga2
    max_params: int | None = None  # constraint
    max_latency_ms: float | None = None  # constraint (needs a latency source)
    # where latency_ms comes from: lut:host (the host's calibrated lookup table, nasctl profile --build-lut)
    # or measure:host (every candidate converted and timed); None: no latency (objective and constraint
    # refused)
    latency_source: str | None = None
    latency_precision: str = "int8"  # int8 | float32 TFLite, as exported
    latency_threads: int = 1
    store: str | None = None  # measurement store (default: the user's cache directory)
    min_clean_acc: float | None = None  # constraint, percent
    eps: float | None = None  # None: the eps the supernet was trained with
    pgd_steps: int = 10  # search-time proxy attack
    val_size: int = 200
    calib_batches: int = 4
    final_steps: int = 20  # final evaluation of the front on the test split
    final_restarts: int = 3
    # fine-tune stage: K front members spread over log(params), the knee among them, each trained on its
    # own (the supernet's recipe) and scored with the final attack; 0 turns it off
    finetune_members: int = 6
    finetune_epochs: int = 40
    seed: int = 0
    device: str = "auto"
    run_root: str = "runs"
    name: str = ""

    def validate(self) -> None:
        parse_objectives(self.objectives)
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
        if self.latency_source:
            from nasctl.profiling.source import parse_latency_source

            parse_latency_source(self.latency_source, self.latency_precision, self.latency_threads)
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise NasctlError(f"--max-latency-ms must be > 0, got {self.max_latency_ms}")
        check_eps(self.eps, " (leave it out to use the supernet's training eps)")
        check_at_least_one(self, {
            "val_size": "validation images per candidate", "pgd_steps": "search-time PGD steps",
            "calib_batches": "BatchNorm calibration batches", "final_steps": "final PGD steps",
            "final_restarts": "final PGD restarts", "epochs": "supernet training epochs",
            "max_params": "the parameter budget"})
        if self.finetune_members < 0 or self.finetune_epochs < 1:
            raise NasctlError(f"--finetune-members must be >= 0 (0: no fine-tune stage) and "
                              f"--finetune-epochs >= 1 (got {self.finetune_members}, {self.finetune_epochs})")
        if self.width_mult is not None and not self.width_mult > 0:
            raise NasctlError(f"--width-mult must be > 0, got {self.width_mult}")
        if self.min_clean_acc is not None and not 0 <= self.min_clean_acc <= 100:
            raise NasctlError(f"--min-clean-acc is a percentage: it must be in [0, 100], got "
                              f"{self.min_clean_acc}")

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


# --- pymoo problem --------------------------------------------------------------------------
def _pymoo():
    from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
    from pymoo.core.duplicate import ElementwiseDuplicateElimination
    from pymoo.core.mixed import MixedVariableMating, MixedVariableSampling
    from pymoo.core.problem import Problem
    from pymoo.core.variable import Choice
    from pymoo.operators.selection.tournament import TournamentSelection

    return NSGA2, binary_tournament, ElementwiseDuplicateElimination, MixedVariableMating, \
        MixedVariableSampling, Problem, Choice, TournamentSelection


def space_vars(space: SearchSpace) -> dict[str, Any]:
    """One pymoo ``Choice`` per gene of the space (:meth:`SearchSpace.genes`): the group, stem and
    head widths where searched, and the block and width of each layer."""
    *_, Choice, _ = _pymoo()
    return {name: Choice(options=list(options)) for name, options in space.genes()}


def vars_from_genome(space: SearchSpace, genome: Genome) -> dict[str, Any]:
    return {name: options[i] for (name, options), i in zip(space.genes(), space.to_vector(genome))}


def genome_from_vars(space: SearchSpace, x: dict[str, Any]) -> Genome:
    return space.from_vector([options.index(x[name]) for name, options in space.genes()])


class SearchState:
    """The objective function of one run: cache/archive lookup, evaluation, and bookkeeping."""

    def __init__(self, space: SearchSpace, objectives: tuple[str, ...], evaluate_fn: Callable[[Genome], dict],
                 sizes: Callable[[Genome], dict], archive: Archive, cfg: SearchConfig,
                 callbacks: SearchCallbacks):
        self.space, self.objectives, self.evaluate_fn, self.sizes = space, objectives, evaluate_fn, sizes
        self.archive, self.cfg, self.cb = archive, cfg, callbacks
        largest = sizes(space.largest())
        self.scale = {k: float(largest[k]) for k in COST_OBJECTIVES if k in largest}
        self.generation = 0
        self.constraints = [c for c in ("max_params", "min_clean_acc", "max_latency_ms")
                            if getattr(cfg, c) is not None]

    def record(self, genome: Genome) -> dict[str, Any]:
        key = genome.encode()
        if key in self.archive:
            return self.archive.records[key]
        rec = {"genome": key, **self.sizes(genome), **self.evaluate_fn(genome), "generation": self.generation,
               "index": len(self.archive)}
        self.archive.add(rec)
        self.cb.on_evaluation(rec)
        return rec

    def F(self, rec: dict[str, Any]) -> list[float]:
        return [minimised(o, rec[o], self.scale) for o in self.objectives]

    def G(self, rec: dict[str, Any]) -> list[float]:
        g = []
        if self.cfg.max_params is not None:
            g.append((rec["params"] - self.cfg.max_params) / self.scale["params"])
        if self.cfg.min_clean_acc is not None:
            g.append((self.cfg.min_clean_acc - rec["clean_acc"]) / 100.0)
        if self.cfg.max_latency_ms is not None:
            g.append((rec["latency_ms"] - self.cfg.max_latency_ms) / self.scale["latency_ms"])
        return g

    def feasible(self, rec: dict[str, Any]) -> bool:
        return all(v <= 0 for v in self.G(rec))


def _make_problem(state: SearchState):
    *_, Problem, _, _ = _pymoo()

    class RobustTinyNAS(Problem):
        def __init__(self):
            super().__init__(vars=space_vars(state.space), n_obj=len(state.objectives),
                             n_ieq_constr=len(state.constraints))

        def _evaluate(self, X, out, *args, **kwargs):
            recs = [state.record(genome_from_vars(state.space, x)) for x in X]
            out["F"] = np.array([state.F(r) for r in recs], dtype=float)
            if state.constraints:
                out["G"] = np.array([state.G(r) for r in recs], dtype=float)

    return RobustTinyNAS()


def _make_nsga2(space: SearchSpace, pop_size: int, mutation_genes: float = 2.0):
    """NSGA-II with pymoo's mixed-variable operators, mutation raised to ``mutation_genes`` per offspring.

    Why not pymoo's default rate (each gene with probability 1/n): a redrawn ``Choice`` often lands on
    the value it had (1 in 3 widths, 1 in 5 blocks) and a skip layer's width gene changes nothing, so
    most offspring were copies or near copies of a parent and the population stalled after about five
    generations. Two genes per offspring gave the highest mean hypervolume of the rates and population
    splits tried at the 200-evaluation budget (``bench/bench_search.py``, BENCHMARKS.md).
    """
    (NSGA2, binary_tournament, ElementwiseDup, MixedVariableMating, MixedVariableSampling, _, Choice,
     Tournament) = _pymoo()
    from pymoo.operators.mutation.rm import ChoiceRandomMutation

    class SameGenome(ElementwiseDup):
        """Two individuals are duplicates when they encode the same subnet (skip ignores width)."""

        def is_equal(self, a, b):
            return genome_from_vars(space, a.X) == genome_from_vars(space, b.X)

    class SeededSampling(MixedVariableSampling):
        """Random initial population that also holds the largest and smallest subnets: the
        sandwich rule trains both every step, so they anchor the two ends of the front."""

        def _do(self, problem, n_samples, random_state=None, **kwargs):
            X = super()._do(problem, n_samples, random_state=random_state, **kwargs)
            for i, g in enumerate((space.largest(), space.smallest())[: len(X)]):
                X[i] = vars_from_genome(space, g)
            return X

    dup = SameGenome()
    prob_var = min(1.0, mutation_genes / len(space.genes()))  # per layer block and width; group, stem, head
    return NSGA2(pop_size=pop_size, sampling=SeededSampling(),
                 mating=MixedVariableMating(selection=Tournament(func_comp=binary_tournament),
                                            mutation={Choice: ChoiceRandomMutation(prob_var=prob_var)},
                                            eliminate_duplicates=dup),
                 eliminate_duplicates=dup)


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


def _run_nsga2(state: SearchState, cfg: SearchConfig, end_generation: Callable[[int], None]) -> None:
    """pymoo's NSGA-II through ask/tell: one generation per ask, evaluated by the problem."""
    algo = _make_nsga2(state.space, cfg.pop_size, cfg.mutation_genes)
    problem = _make_problem(state)
    algo.setup(problem, termination=("n_gen", cfg.generations), seed=cfg.seed, verbose=False)
    gen = 0
    while algo.has_next():
        gen += 1
        state.generation = gen
        pop = algo.ask()
        if pop is None or len(pop) == 0:  # every distinct subnet of a small space is already evaluated
            log.warning("generation %d: no new distinct subnet is left to try (the space has only a few): "
                        "the "
                        "search stops here with every subnet evaluated", gen)
            break
        algo.evaluator.eval(problem, pop)
        algo.tell(infills=pop)
        end_generation(state.generation)


def _run_random(state: SearchState, cfg: SearchConfig, end_generation: Callable[[int], None]) -> None:
    """The baseline at the same budget: ``pop_size`` new distinct random subnets per generation."""
    rng = np.random.default_rng(cfg.seed)
    seen: set[str] = set()
    for gen in range(1, cfg.generations + 1):
        state.generation = gen
        batch = []
        for _ in range(100 * cfg.pop_size):
            if len(batch) == cfg.pop_size:
                break
            g = state.space.sample(rng)
            if g.encode() not in seen:
                seen.add(g.encode())
                batch.append(g)
        for g in batch:
            state.record(g)
        end_generation(gen)


# search algorithms by --algorithm name: each runs cfg.generations generations through the state and
# calls end_generation(gen) after each; a new one is a function and a line here
ALGORITHMS: dict[str, Callable[[SearchState, SearchConfig, Callable[[int], None]], None]] = {
    "nsga2": _run_nsga2, "random": _run_random,
}


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
