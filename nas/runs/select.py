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
from nasctl.errors import NasctlError

from ..space import Genome, GenomeError


class SelectionError(NasctlError):
    """A run, pick or front that cannot be used."""


# what eval and export take instead of a search run: the default ``instead`` of every resolver below. A
# command without these flags (report, finetune, the studies) passes ``instead=None``, so no message
# suggests a flag it lacks.
CHECKPOINT_INSTEAD = "--checkpoint CKPT --arch GENOME"


def _or(instead: str | None, verb: str = "pass") -> str:
    """``", or pass --checkpoint CKPT --arch GENOME"`` (the command's alternative), or ``""``."""
    return f", or {verb} {instead}" if instead else ""


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


def latest_run(run_root: str | os.PathLike = "runs", instead: str | None = CHECKPOINT_INSTEAD) -> Path:
    """The newest ``<run_root>/search/*`` folder that holds a ``pareto.json``."""
    root = Path(run_root) / "search"
    runs = sorted((p for p in root.glob("*") if (p / "pareto.json").is_file()), key=lambda p: p.name)
    if not runs:
        raise SelectionError(
            f"no finished search run under {str(root)!r}: run 'nasctl search' first, or pass "
            f"--run RUN{_or(instead, 'with')}"
        )
    return runs[-1]


def read_front(run: str | os.PathLike,
               instead: str | None = CHECKPOINT_INSTEAD) -> tuple[Path, dict[str, Any]]:
    """(run folder, parsed pareto.json) of a run folder or a pareto.json path, with clear errors.

    ``instead``: what the calling command takes in place of a search run (its own flags), added to each
    error's fix; None where it has none."""
    path = Path(run)
    pareto = path if path.name == "pareto.json" else path / "pareto.json"
    if not path.exists():
        raise SelectionError(
            f"search run {str(run)!r} does not exist: pass the folder of a 'nasctl search' run "
            f"(runs/search/<stamp>-<name>)"
        )
    missing = no_front_message(path if path.name != "pareto.json" else path.parent, str(run), instead)
    doc = read_json_object(pareto, error=SelectionError, fix="re-run or resume the search", missing=missing)
    front = doc.get("front")
    if not front:
        limits = doc.get("constraints")
        if limits:
            flags = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in limits.items())
            raise SelectionError(
                f"search run {str(run)!r} found no subnet that meets its constraints ({flags}): "
                f"start a new search with looser constraints{_or(instead)}"
            )
        raise SelectionError(
            f"search run {str(run)!r} has an empty front in pareto.json: nothing to export; "
            f"resume the search{_or(instead)}"
        )
    return pareto.parent, doc


def no_front_message(folder: Path, run: str, instead: str | None) -> str:
    """Why ``folder`` has no ``pareto.json`` and what to give instead: an unfinished search is resumed, a
    folder of another kind (a training run, an export, a study, ...) is named as such with the search run
    it came from, anything else is not a run folder at all."""
    from nasctl.runfolder import describe, folder_kind, source_run

    kind = folder_kind(folder)
    head = f"search run {run!r} has no pareto.json"
    if kind == "search":
        return f"{head}: it has not finished; resume it with 'nasctl search --resume {run}'{_or(instead)}"
    if kind is None:
        return (f"{head}: {describe(folder)}; give the folder of a 'nasctl search' run "
                f"(runs/search/<stamp>-<name>){_or(instead)}")
    src = source_run(folder)
    use = (f"; search its supernet with 'nasctl search --supernet {run}' first" if kind == "train"
           else f"; use the search run it came from, {src!r}" if src
           else "; give the folder of a 'nasctl search' run (runs/search/<stamp>-<name>)")
    return f"{head}: it is {describe(folder)}, not a search run{use}{_or(instead)}"


def run_supernet(run_dir: str | os.PathLike, doc: dict[str, Any],
                 instead: str | None = CHECKPOINT_INSTEAD) -> str:
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
            f"pareto.json of run {str(run_dir)!r} names no 'supernet' checkpoint: it was not written by "
            f"nasctl search, or was edited; start a new search{_or(instead)}"
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
            f"run searched (sha256 differs): put it back{_or(instead)}"
        )
    raise SelectionError(
        f"the supernet {ref!r} named by run {str(run_dir)!r} does not exist (moved or deleted?): "
        f"put it back{_or(instead)}"
    )


def pick_from_run(run: str | os.PathLike, pick: str | int = "knee",
                  instead: str | None = CHECKPOINT_INSTEAD) -> RunPick:
    """Select ``knee`` (the default), a front index, or a genome string from the run's front
    (``instead``: as for :func:`read_front`)."""
    run_dir, doc = read_front(run, instead)
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
                f"members): pick an INDEX or 'knee'{_or(instead, 'give it with')}"
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
        checkpoint=run_supernet(run_dir, doc, instead),
        is_knee=index == knee,
        dataset=doc.get("dataset"),
        data_dir=doc.get("data_dir"),
        seed=doc.get("seed"),
        eps=doc.get("eps"),
        finetuned_checkpoint=_finetuned(run_dir, entry, instead),
        bn_calibration=doc.get("bn_calibration"),
    )


def _finetuned(run_dir: Path, entry: dict[str, Any], instead: str | None) -> str | None:
    ref = entry.get("finetuned_checkpoint")
    if not ref:
        return None
    path = run_dir / ref
    if not path.is_file():
        raise SelectionError(
            f"front entry {entry.get('genome')!r} of run {str(run_dir)!r} names fine-tuned weights {ref!r} "
            f"that do not exist (deleted?): resume the search to fine-tune it again{_or(instead)}"
        )
    return str(path)


def _canonical(text: Any) -> str | None:
    try:
        return Genome.decode(str(text)).encode()
    except GenomeError:
        return None
