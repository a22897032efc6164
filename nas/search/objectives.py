"""Search objectives and constraints: what each means, its unit, and how it becomes a value to minimise.

Accuracies are maximised (pymoo minimises ``1 - acc/100``); sizes are minimised and divided by the
size of the space's largest subnet, so every minimised value lies in about [0, 1] and one fixed
hypervolume reference point (1.1 in every objective) is meaningful across runs of the same space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nasctl.core import did_you_mean
from nasctl.errors import NasctlError

if TYPE_CHECKING:
    from ..space import Genome, SearchSpace

# (space, genome, data set info as a dict) -> the objective's value, from the genome alone
CostFn = Callable[["SearchSpace", "Genome", dict[str, Any]], float]


@dataclass(frozen=True)
class Objective:
    """One objective: its name in records, direction, unit, plot label, and -- for a cost known from
    the genome alone -- the function that computes it (accuracies are measured by the evaluator and
    latency comes from a latency source, so theirs is None)."""

    name: str
    maximize: bool
    unit: str
    label: str
    compute: CostFn | None = None


def _shape(info: dict[str, Any]) -> tuple[int, int, int]:
    return info["in_channels"], info["resolution"], info["num_classes"]


def params(space: SearchSpace, genome: Genome, info: dict[str, Any]) -> float:
    return space.cost(genome, *_shape(info))[0]


def macs(space: SearchSpace, genome: Genome, info: dict[str, Any]) -> float:
    return space.cost(genome, *_shape(info))[1]


def int8_bytes(space: SearchSpace, genome: Genome, info: dict[str, Any]) -> float:
    return space.int8_bytes(genome, *_shape(info))


# the registry: a new objective computed from the genome is a function and a line here
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("clean_acc", True, "%", "clean accuracy"),
    Objective("adv_acc", True, "%", "PGD accuracy"),
    Objective("params", False, "", "parameters", params),
    Objective("int8_bytes", False, "B", "int8 model size (estimated)", int8_bytes),
    Objective("macs", False, "", "multiply-accumulates", macs),
    Objective("latency_ms", False, "ms", "latency"),
)}
SIZE_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.compute is not None)
DEFAULT_OBJECTIVES = ("clean_acc", "adv_acc", "params")


def parse_objectives(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate a comma-separated objective list (``latency_ms`` also needs a latency source: the
    search config checks that)."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if len(names) < 2:
        raise NasctlError(f"--objectives needs at least two objectives, got {names}: "
                          f"e.g. clean_acc,adv_acc,params")
    for n in names:
        if n not in OBJECTIVES:
            raise NasctlError(f"unknown objective {n!r}{did_you_mean(n, OBJECTIVES)}; choose from "
                              f"{', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise NasctlError(f"--objectives lists an objective twice: {names}")
    return tuple(names)


def genome_costs(space: SearchSpace, genome: Genome, info: dict[str, Any]) -> dict[str, Any]:
    """Every registered objective that is computed from the genome alone, for one record."""
    return {n: o.compute(space, genome, info) for n, o in OBJECTIVES.items() if o.compute is not None}


def minimised(name: str, value: float, scale: dict[str, float]) -> float:
    """The value pymoo minimises for objective ``name`` (errors in [0,1], sizes over ``scale``)."""
    if OBJECTIVES[name].maximize:
        return 1.0 - value / 100.0
    return value / scale[name]
