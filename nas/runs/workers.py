"""What a search run's worker processes do (``nasctl search --workers N``): each loads the run's supernet
and receives its data once, then answers three kinds of item -- a candidate's validation accuracy, a
front member's final evaluation, a fine-tuning of a front member -- with exactly the functions a serial
run calls, so a number never depends on which process computed it.

The pool itself (spawn, threads, devices, dead workers) is :mod:`nasctl.workers`; the parent alone
writes the run folder, in the serial order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nasctl.workers import worker_state

from ..data import DataSplits
from ..search.evaluator import CandidateEvaluator, EvalSettings, final_evaluation
from ..space import Genome
from ..supernet import BNCalibration
from ..supernet.checkpoint import LoadedSupernet, load_supernet
from ..training.subnet import FinetuneConfig
from .finetune import finetune_inherited


@dataclass
class SearchWorker:
    """One worker's state: the run's supernet, its data and the search's evaluator, on its device."""

    loaded: LoadedSupernet
    data: DataSplits
    evaluator: CandidateEvaluator
    device: torch.device


def init_search_worker(device: str, checkpoint: str, data: DataSplits, eps: float, settings: EvalSettings,
                       seed: int) -> SearchWorker:
    """Built once per worker process (:class:`nasctl.workers.WorkerPool`'s ``init``)."""
    loaded = load_supernet(checkpoint)
    dev = torch.device(device)
    evaluator = CandidateEvaluator(loaded.supernet, data, eps, settings, seed=seed, device=dev)
    return SearchWorker(loaded, data, evaluator, dev)


def candidate_task(genome: str) -> dict[str, float]:
    """A candidate's validation accuracy with inherited weights (:meth:`CandidateEvaluator.accuracy`)."""
    w: SearchWorker = worker_state()
    return w.evaluator.accuracy(Genome.decode(genome))


def final_task(item: tuple[str, int, int]) -> dict[str, Any]:
    """A front member's final evaluation on the test split (:func:`final_evaluation`)."""
    genome, steps, restarts = item
    w: SearchWorker = worker_state()
    return final_evaluation(w.evaluator, Genome.decode(genome), w.data.test, steps, restarts)


def finetune_task(item: tuple[str, FinetuneConfig, BNCalibration, float]) -> tuple[dict[str, Any], dict]:
    """A front member fine-tuned from its inherited weights (BN prepared as the search scored it):
    ``(state_dict on the CPU, result)`` for the parent to save (:func:`.finetune.save_member`)."""
    genome, cfg, calibration, eps = item
    w: SearchWorker = worker_state()
    model, result = finetune_inherited(w.loaded.supernet, w.data, genome, cfg, calibration, eps, w.device)
    return result, {k: v.cpu() for k, v in model.state_dict().items()}


STAGE_TASKS = {"final": final_task, "finetune": finetune_task}


def stage_task(item: tuple[str, Any]) -> Any:
    """One item of a queue that mixes kinds (the fine-tunings and the front's final evaluations):
    ``(kind, payload)`` answered by the task of that kind (:data:`STAGE_TASKS`)."""
    kind, payload = item
    return STAGE_TASKS[kind](payload)
