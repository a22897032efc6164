"""The search layer: the objectives registry, the pymoo problem, the algorithms, the archive, the front's
pure functions, the latency check and the driver (``SearchConfig``, ``run_generations``).

Low to high inside: ``objectives`` and ``archive``, then ``front`` and ``problem``, then ``algorithms``,
then ``driver``; ``latency_check`` stands apart. The whole ``nasctl search`` run (train first, search,
final evaluation, fine-tune stage) sits above this package, in :mod:`nasctl.nas.runs.search`.
"""

from .driver import (
    AA_SCOPES,
    GenerationStats,
    LatencyProvider,
    SearchCallbacks,
    SearchConfig,
    SearchResult,
    best_values,
    check_latency_provider,
    hypervolume,
    nondominated,
    run_generations,
)

__all__ = [
    "AA_SCOPES", "GenerationStats", "LatencyProvider", "SearchCallbacks", "SearchConfig", "SearchResult",
    "best_values", "check_latency_provider", "hypervolume", "nondominated", "run_generations",
]
