"""Choosing subnets from a finished search run: ``--run RUN --pick knee|INDEX|GENOME``.

One resolver for every command that consumes a search (``eval``, ``export``, benchmarks): it reads
``<run>/pareto.json``, finds the knee, an index or a genome on the front, and the supernet the run
searched (absolute, or relative to the run folder), with one clear error for each way it can fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasctl.core import read_json_object

from .errors import NasctlError
from .space import Genome, GenomeError


class SelectionError(NasctlError):
    """A run, pick or front that cannot be used."""


@dataclass
class RunPick:
    """One member of a search run's front and what is needed to rebuild it."""

    run_dir: str
    index: int  # position in the front
    genome: str
    entry: dict[str, Any]  # the front entry as written by the search (accuracies, params, ...)
    checkpoint: str  # the supernet the run searched
    is_knee: bool
    dataset: str | None = None
    data_dir: str | None = None
    seed: int | None = None
    eps: float | None = None  # the search's threat model
    finetuned_checkpoint: str | None = None  # the member trained on its own by the fine-tune stage
    bn_calibration: dict[str, Any] | None = None  # how the search recalibrated BN (export does the same)


def latest_run(run_root: str | os.PathLike = "runs") -> Path:
    """The newest ``<run_root>/search/*`` folder that holds a ``pareto.json``."""
    root = Path(run_root) / "search"
    runs = sorted((p for p in root.glob("*") if (p / "pareto.json").is_file()), key=lambda p: p.name)
    if not runs:
        raise SelectionError(
            f"no finished search run under {str(root)!r}: run 'nasctl search' first, or pass "
            f"--run RUN, or --checkpoint CKPT --arch GENOME"
        )
    return runs[-1]


def read_front(run: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(run folder, parsed pareto.json) of a run folder or a pareto.json path, with clear errors."""
    path = Path(run)
    pareto = path if path.name == "pareto.json" else path / "pareto.json"
    if not path.exists():
        raise SelectionError(
            f"search run {str(run)!r} does not exist: pass the folder of a 'nasctl search' run "
            f"(runs/search/<stamp>-<name>)"
        )
    missing = (f"search run {str(run)!r} has no pareto.json (not finished, or not a search run): "
               f"resume it with 'nasctl search --resume {run}' or pass --checkpoint CKPT --arch GENOME")
    doc = read_json_object(pareto, error=SelectionError, fix="re-run or resume the search", missing=missing)
    front = doc.get("front")
    if not front:
        limits = doc.get("constraints")
        if limits:
            flags = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in limits.items())
            raise SelectionError(
                f"search run {str(run)!r} found no subnet that meets its constraints ({flags}): "
                f"start a new search with looser constraints, or pass --checkpoint CKPT --arch GENOME"
            )
        raise SelectionError(
            f"search run {str(run)!r} has an empty front in pareto.json: nothing to export; "
            f"resume the search or pass --checkpoint CKPT --arch GENOME"
        )
    return pareto.parent, doc


def run_supernet(run_dir: str | os.PathLike, doc: dict[str, Any]) -> str:
    """The supernet checkpoint a finished run searched, found even when the run was moved or copied.

    ``pareto.json`` names it relative to the run folder when it lives inside (trained first), else
    absolute. A relative name is resolved against the run folder, never the working directory; an
    absolute one that no longer exists falls back to the run's own ``supernet/supernet.pt``. When the
    run recorded the checkpoint's SHA-256, a candidate with another hash is not taken.
    """
    from nasctl.core import sha256_file

    run_dir = Path(run_dir)
    ref = doc.get("supernet")
    if not ref:
        raise SelectionError(
            f"pareto.json of run {str(run_dir)!r} names no 'supernet' checkpoint: pass "
            f"--checkpoint CKPT --arch GENOME instead"
        )
    p = Path(ref)
    candidates = [p] if p.is_absolute() else [run_dir / p]
    candidates.append(run_dir / "supernet" / "supernet.pt")
    want = doc.get("supernet_sha256")
    seen = []
    for cand in dict.fromkeys(candidates):
        if cand.is_file():
            if want and sha256_file(cand) != want:
                seen.append(str(cand))
                continue
            return str(cand)
    if seen:
        raise SelectionError(
            f"the supernet of run {str(run_dir)!r} was replaced: {', '.join(seen)} is not the checkpoint the "
            f"run searched (sha256 differs): put it back, or pass --checkpoint CKPT --arch GENOME"
        )
    raise SelectionError(
        f"the supernet {ref!r} named by run {str(run_dir)!r} does not exist (moved or deleted?): "
        f"pass --checkpoint CKPT --arch GENOME"
    )


def pick_from_run(run: str | os.PathLike, pick: str | int = "knee") -> RunPick:
    """Select ``knee`` (the default), a front index, or a genome string from the run's front."""
    run_dir, doc = read_front(run)
    front = doc["front"]
    knee = doc.get("knee")
    text = str(pick).strip()
    if text == "knee":
        if not isinstance(knee, int) or not 0 <= knee < len(front):
            raise SelectionError(
                f"pareto.json of run {str(run_dir)!r} has no valid knee index ({knee!r}): "
                f"pass --pick INDEX (0..{len(front) - 1})"
            )
        index = knee
    elif text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(front):
            raise SelectionError(
                f"--pick {index} is outside the front of run {str(run_dir)!r}, which has "
                f"{len(front)} members: pick 0..{len(front) - 1}, 'knee' or a genome"
            )
    else:
        want = Genome.decode(text).encode()  # GenomeError for a malformed string
        matches = [i for i, e in enumerate(front) if _canonical(e.get("genome")) == want]
        if not matches:
            raise SelectionError(
                f"genome {text!r} is not on the front of run {str(run_dir)!r} ({len(front)} "
                f"members): pick an INDEX or 'knee', or export it with --checkpoint CKPT --arch GENOME"
            )
        index = matches[0]
    entry = front[index]
    if "genome" not in entry:
        raise SelectionError(f"front entry {index} of run {str(run_dir)!r} has no genome: re-run the search")
    return RunPick(
        run_dir=str(run_dir),
        index=index,
        genome=str(entry["genome"]),
        entry=dict(entry),
        checkpoint=run_supernet(run_dir, doc),
        is_knee=index == knee,
        dataset=doc.get("dataset"),
        data_dir=doc.get("data_dir"),
        seed=doc.get("seed"),
        eps=doc.get("eps"),
        finetuned_checkpoint=_finetuned(run_dir, entry),
        bn_calibration=doc.get("bn_calibration"),
    )


def _finetuned(run_dir: Path, entry: dict[str, Any]) -> str | None:
    ref = entry.get("finetuned_checkpoint")
    if not ref:
        return None
    path = run_dir / ref
    if not path.is_file():
        raise SelectionError(
            f"front entry {entry.get('genome')!r} of run {str(run_dir)!r} names fine-tuned weights {ref!r} "
            f"that do not exist (deleted?): resume the search to fine-tune it again, or pass "
            f"--checkpoint CKPT --arch GENOME"
        )
    return str(path)


def _canonical(text: Any) -> str | None:
    try:
        return Genome.decode(str(text)).encode()
    except GenomeError:
        return None
