"""Search algorithms by ``--algorithm`` name: NSGA-II (pymoo) and the random baseline.

Each runs ``cfg.generations`` generations through a :class:`~.problem.SearchState` and calls
``end_generation(gen)`` after each (NSGA-II through a pymoo ``Callback``). A new algorithm is one
function here and one line in :data:`ALGORITHMS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..space import SearchSpace
from .problem import _pymoo, genome_from_vars, make_problem, vars_from_genome

if TYPE_CHECKING:
    from .problem import SearchSettings, SearchState

log = logging.getLogger(__name__)


def make_nsga2(space: SearchSpace, pop_size: int, mutation_genes: float = 2.0, callback=None):
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
                                            eliminate_duplicates=dup, callback=callback),
                 eliminate_duplicates=dup, callback=callback)


def run_nsga2(state: SearchState, cfg: SearchSettings, end_generation: Callable[[int], None]) -> None:
    """pymoo's NSGA-II through ask/tell: one generation per ask, evaluated by the problem."""
    from pymoo.core.callback import Callback

    class EndOfGeneration(Callback):  # pymoo calls it after each tell
        def notify(self, algorithm):
            end_generation(state.generation)

    algo = make_nsga2(state.space, cfg.pop_size, cfg.mutation_genes, EndOfGeneration())
    problem = make_problem(state)
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


def run_random(state: SearchState, cfg: SearchSettings, end_generation: Callable[[int], None]) -> None:
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
        state.records(batch)
        end_generation(gen)


# search algorithms by --algorithm name: each runs cfg.generations generations through the state and
# calls end_generation(gen) after each; a new one is a function and a line here
ALGORITHMS: dict[str, Callable[[SearchState, SearchSettings, Callable[[int], None]], None]] = {
    "nsga2": run_nsga2, "random": run_random,
}
