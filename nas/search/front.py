"""The Pareto front of a set of evaluated subnets: pure functions on archive records.

Non-dominated sorting and the hypervolume come from pymoo; what nasctl adds is how a record becomes a
row of minimised objectives (:func:`nasctl.nas.search.objectives.minimised`, sizes relative to the largest
subnet) and which records are feasible. No search state is needed: a tool that reads archives (a
benchmark, a report) calls these directly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .objectives import OBJECTIVES, minimised

HV_REFERENCE = 1.1  # in every minimised objective (errors in [0,1], sizes relative to the largest subnet)

Record = Mapping[str, Any]


def feasible(rec: Record, constraints: Mapping[str, float] | None = None) -> bool:
    """Whether ``rec`` meets ``constraints`` (``max_params``, ``max_latency_ms``, ``min_clean_acc``)."""
    c = constraints or {}
    if c.get("max_params") is not None and rec["params"] > c["max_params"]:
        return False
    if c.get("max_latency_ms") is not None and rec["latency_ms"] > c["max_latency_ms"]:
        return False
    if c.get("min_clean_acc") is not None and rec["clean_acc"] < c["min_clean_acc"]:
        return False
    return True


def objective_matrix(recs: Sequence[Record], objectives: Sequence[str],
                     scale: Mapping[str, float]) -> np.ndarray:
    """One row per record, one minimised column per objective."""
    return np.array([[minimised(o, r[o], scale) for o in objectives] for r in recs], dtype=float)


def nondominated(recs: Sequence[Record], objectives: Sequence[str], scale: Mapping[str, float],
                 constraints: Mapping[str, float] | None = None) -> list[Record]:
    """The feasible records no other feasible record dominates, smallest first (then by genome)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    feas = [r for r in recs if feasible(r, constraints)]
    if not feas:
        return []
    idx = NonDominatedSorting().do(objective_matrix(feas, objectives, scale), only_non_dominated_front=True)
    return [feas[i] for i in sorted(idx, key=lambda i: (feas[i]["params"], feas[i]["genome"]))]


def hypervolume(front: Sequence[Record], objectives: Sequence[str], scale: Mapping[str, float],
                reference: float = HV_REFERENCE) -> float:
    """pymoo's hypervolume of ``front`` against ``reference`` in every minimised objective (0 if empty)."""
    from pymoo.indicators.hv import HV

    if not front:
        return 0.0
    F = objective_matrix(front, objectives, scale)
    return float(HV(ref_point=np.full(F.shape[1], reference))(F))


def best_values(recs: Sequence[Record], objectives: Sequence[str],
                constraints: Mapping[str, float] | None = None) -> dict[str, float]:
    """Best raw value of each objective over the feasible records ({} while none is feasible)."""
    feas = [r for r in recs if feasible(r, constraints)]
    if not feas:
        return {}
    return {o: (max if OBJECTIVES[o].maximize else min)(r[o] for r in feas) for o in objectives}


def knee_index(front: Sequence[Record], objectives: Sequence[str]) -> int:
    """The front member closest (Euclidean) to the ideal point after scaling each objective to [0, 1]
    over the front -- the balanced choice that ``nasctl export`` takes by default."""
    if not front:
        raise ValueError("empty front")
    F = np.array([[(-r[o] if OBJECTIVES[o].maximize else r[o]) for o in objectives] for r in front],
                 dtype=float)
    lo, hi = F.min(0), F.max(0)
    Z = (F - lo) / np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(np.linalg.norm(Z, axis=1)))
