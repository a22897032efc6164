"""The search as a pymoo problem: genes <-> genomes, and :class:`SearchState`, the objective function
with its evaluation cache (the archive), constraints and per-evaluation callback.

Kept apart from the algorithms (:mod:`.algorithms`), the front's pure functions (:mod:`.front`) and
the driver (:mod:`.search`), as pymoo keeps problem, algorithm and callback apart: a new algorithm
needs no problem code, and a new objective is a line in :mod:`.objectives` plus its value in the
record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from ..space import Genome, SearchSpace
from .archive import Archive
from .objectives import OBJECTIVES, minimised


class SearchSettings(Protocol):
    """What the problem and the algorithms read of a run's settings (:class:`.search.SearchConfig` is
    one): the budget, the seed, NSGA-II's mutation and the constraints. A protocol, so the problem sits
    below the driver and never imports it."""

    pop_size: int
    generations: int
    seed: int
    mutation_genes: float
    max_params: int | None
    min_clean_acc: float | None
    max_latency_ms: float | None

    def constraints(self) -> dict[str, float]: ...


class EvaluationHook(Protocol):
    """Told of every record the problem evaluates (:class:`.search.SearchCallbacks` is one)."""

    def on_evaluation(self, record: dict[str, Any]) -> None: ...


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
                 sizes: Callable[[Genome], dict], archive: Archive, cfg: SearchSettings,
                 callbacks: EvaluationHook,
                 evaluate_many: Callable[[list[Genome]], Iterable[dict]] | None = None):
        self.space, self.objectives, self.evaluate_fn, self.sizes = space, objectives, evaluate_fn, sizes
        self.archive, self.cfg, self.cb = archive, cfg, callbacks
        # several new candidates at once (worker processes), answered in their order; default one by one
        self.evaluate_many = evaluate_many or (lambda genomes: map(evaluate_fn, genomes))
        largest = sizes(space.largest())
        # every minimised objective is divided by the largest subnet's value (read from the registry now,
        # so an objective registered after import is scaled too)
        self.scale = {k: float(v) for k, v in largest.items()
                      if k in OBJECTIVES and not OBJECTIVES[k].maximize}
        self.generation = 0
        self.constraints = [c for c in ("max_params", "min_clean_acc", "max_latency_ms")
                            if getattr(cfg, c) is not None]

    def record(self, genome: Genome) -> dict[str, Any]:
        return self.records([genome])[0]

    def records(self, genomes: list[Genome]) -> list[dict[str, Any]]:
        """The records of ``genomes``: the archive's where it has them, the others evaluated (together, by
        :attr:`evaluate_many`) and added to the archive in the order given -- the order a one-by-one
        evaluation adds them, so the archive is the same however many workers evaluated it."""
        new: dict[str, Genome] = {}
        for g in genomes:
            key = g.encode()
            if key not in self.archive and key not in new:
                new[key] = g
        for (key, g), acc in zip(new.items(), self.evaluate_many(list(new.values()))):
            rec = {"genome": key, **self.sizes(g), **acc, "generation": self.generation,
                   "index": len(self.archive)}
            self.archive.add(rec)
            self.cb.on_evaluation(rec)
        return [self.archive.records[g.encode()] for g in genomes]

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


def make_problem(state: SearchState):
    """The pymoo ``Problem`` whose evaluation is ``state``'s (archive first, then the evaluator)."""
    *_, Problem, _, _ = _pymoo()

    class RobustTinyNAS(Problem):
        def __init__(self):
            super().__init__(vars=space_vars(state.space), n_obj=len(state.objectives),
                             n_ieq_constr=len(state.constraints))

        def _evaluate(self, X, out, *args, **kwargs):
            recs = state.records([genome_from_vars(state.space, x) for x in X])
            out["F"] = np.array([state.F(r) for r in recs], dtype=float)
            if state.constraints:
                out["G"] = np.array([state.G(r) for r in recs], dtype=float)

    return RobustTinyNAS()
