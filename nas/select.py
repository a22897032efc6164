"""Choosing subnets from a search run or a checkpoint: ``--run RUN --pick knee|INDEX|GENOME`` or
``--supernet CKPT --arch GENOME`` -- one resolver shared by ``eval`` and ``export``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import LoadedSupernet, load_supernet
from .errors import NasctlError
from .space import Genome


@dataclass
class Selection:
    loaded: LoadedSupernet
    genomes: list[Genome]
    run: dict[str, Any] | None  # the run's pareto.json, when chosen from a run


def read_front(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "pareto.json" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise NasctlError(f"{str(run_dir)!r} has no pareto.json: give a finished search run folder "
                          f"(runs/search/<stamp>) or resume it with 'nasctl search --resume {run_dir}'")
    doc = json.loads(path.read_text())
    if not doc.get("front"):
        raise NasctlError(f"the front in {str(path)!r} is empty (every candidate violated the constraints?): "
                          f"relax --max-params/--min-clean-acc and search again")
    return doc


def select(run: str | None = None, pick: str | None = "knee", supernet: str | None = None,
           arch: list[str] | None = None) -> Selection:
    """Resolve which supernet and which genomes the user means, with one clear error otherwise."""
    if run is None and supernet is None:
        raise NasctlError("say which subnet: --run RUN [--pick knee|all|INDEX|GENOME] or --supernet CKPT --arch GENOME")
    doc = None
    if run is not None:
        doc = read_front(run)
        ckpt = Path(doc["supernet"])
        if not ckpt.is_absolute() and not ckpt.exists():  # older runs stored it relative to their cwd
            run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
            ckpt = run_dir / "supernet" / "supernet.pt"
        loaded = load_supernet(supernet or ckpt)
    else:
        loaded = load_supernet(supernet)
    if arch:
        return Selection(loaded, [loaded.space.parse(a) for a in arch], doc)
    if doc is None:
        raise NasctlError("--supernet needs --arch GENOME (a genome string such as those in a run's pareto.json)")
    front = doc["front"]
    pick = pick or "knee"
    if pick == "knee":
        chosen = [front[doc["knee"]]["genome"]]
    elif pick == "all":
        chosen = [r["genome"] for r in front]
    elif pick.lstrip("-").isdigit():
        i = int(pick)
        if not -len(front) <= i < len(front):
            raise NasctlError(f"--pick {i}: the front has {len(front)} members (0..{len(front) - 1})")
        chosen = [front[i]["genome"]]
    else:
        chosen = [pick]
    return Selection(loaded, [loaded.space.parse(g) for g in chosen], doc)
