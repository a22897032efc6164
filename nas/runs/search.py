"""A whole ``nasctl search`` run: (train a supernet,) search, evaluate the front strongly, write outputs.

The run folder holds everything: ``config.json`` first, the supernet training run in ``supernet/``
when none was given, then ``archive.jsonl`` growing candidate by candidate, ``history.json`` after
each generation, and the front, plots and summary at the end. ``resume_search`` picks up any of
these stages after a crash or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nasctl.config import build_config
from nasctl.core import atomic_write_json, resolve_device, sha256_file
from nasctl.errors import NasctlError
from nasctl.runfolder import run_lock, run_scope, write_run_config
from nasctl.workers import RankPool, WorkerDied, WorkerPool, broadcast, process_group, resolve_workers, world

from ..attacks.autoattack import AA_LABELS
from ..data import DataSplits, first_test_images, subset_train, supernet_data
from ..render.outputs import write_outputs
from ..search import LatencyProvider, SearchCallbacks, SearchConfig, check_latency_provider, run_generations
from ..search.archive import Archive
from ..search.evaluator import CandidateEvaluator, EvalSettings, final_evaluation
from ..search.front import HV_REFERENCE, knee_index
from ..search.latency_check import run_latency_check
from ..search.objectives import genome_costs, parse_objectives
from ..search.problem import SearchState
from ..space import Genome, GenomeError, SearchSpace
from ..supernet import BNCalibration
from ..supernet.checkpoint import LoadedSupernet, load_supernet
from ..training import supernet as train_mod
from ..training.subnet import TRADEOFFS, FinetuneConfig
from .finetune import PICK_RULE, finetune_inherited, save_member, spread_picks
from .workers import SearchWorker, candidate_task, final_task, init_search_worker, stage_task

SUPERNET_RECORD = "supernet.json"  # which supernet this run searches: written before the first candidate

log = logging.getLogger(__name__)


def _train_first(cfg: SearchConfig, run_dir: Path, train_callbacks, data: DataSplits | None = None) -> Path:
    """Train (or resume training) the supernet inside the search run folder."""
    sub = run_dir / "supernet"
    if (sub / "supernet.pt").exists():
        return sub / "supernet.pt"
    if (sub / "checkpoint.pt").exists():
        log.info("resuming the interrupted supernet training in %s", sub)
        return train_mod.resume_training(sub, train_callbacks)[0]
    sub.mkdir(parents=True, exist_ok=True)
    tcfg = cfg.train_config()
    log.info("no --supernet given: training one first (%d epochs, %s attack, %s sampling) in %s",
             tcfg.epochs, tcfg.attack, tcfg.sampling, sub)
    trained = train_mod.train_supernet(tcfg, train_callbacks, run_dir=sub, data=data)[0]
    return Path(broadcast(str(trained)))  # under torchrun rank 0 alone wrote it


def _expected_space(cfg: SearchConfig):
    """The space the user asked for explicitly (--space/--width-mult), to check a given supernet."""
    if cfg.supernet is None or (cfg.space is None and cfg.width_mult is None):
        return None
    tcfg = train_mod.TrainConfig(dataset=cfg.dataset, space=cfg.space, width_mult=cfg.width_mult or 1.0)
    return train_mod.resolve_space(tcfg)


def sizes_fn(space: SearchSpace, info: dict[str, Any],
             latency: Callable[[Genome], float] | None = None) -> Callable[[Genome], dict[str, Any]]:
    """The search's size objectives of a genome: its analytic costs on the data set's input
    (:func:`genome_costs`: params, MACs) plus ``latency_ms`` when a latency callable is handed in, so the
    pymoo problem and a test with a synthetic objective score sizes the same way."""
    def sizes(g: Genome) -> dict[str, Any]:
        out = genome_costs(space, g, info)
        if latency is not None:
            out["latency_ms"] = latency(g)
        return out

    return sizes


def _latency_source(cfg: SearchConfig, loaded: LoadedSupernet, latency: LatencyProvider | None):
    """The run's latency source (None without --latency-source), bound to its space and input shape by
    the caller's provider (:func:`check_latency_provider` made sure there is one)."""
    if not cfg.latency_source:
        return None
    check_latency_provider(cfg, latency)
    from ..data import DatasetInfo

    info = DatasetInfo.from_dict(loaded.dataset)
    return latency.open(cfg.latency_source, cfg.store, loaded.space, info, cfg.latency_precision,
                        cfg.latency_threads)


def _recorded_space(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The space this run is known to search, and where that is written, before trusting a supernet."""
    record = run_dir / SUPERNET_RECORD
    if record.is_file():
        return _read_json(record).get("space"), str(record)
    trained = run_dir / "supernet" / "config.json"
    if trained.is_file():
        return _read_json(trained).get("space"), str(trained)
    pareto = run_dir / "pareto.json"
    if pareto.is_file():
        return _read_json(pareto).get("space"), str(pareto)
    return None, ""


def _read_json(path: Path) -> dict[str, Any]:
    from nasctl.core import read_json_object

    return read_json_object(path, fix="restore it from the run, or start a new run")


def check_supernet_belongs(run_dir: Path, loaded: LoadedSupernet, archive: Archive) -> dict[str, Any]:
    """Refuse a supernet that is not the one this run searched, before anything is written.

    A resumed search answers from ``archive.jsonl``, so every record must come from the same supernet:
    a checkpoint of another space or width (or retrained: another hash) would mix two searches in one
    archive and break the run for good. Returns the record to write for a new run.
    """
    space = loaded.space.to_dict()
    record_path = run_dir / SUPERNET_RECORD
    recorded, where = _recorded_space(run_dir)
    if recorded is not None and recorded != space:
        from ..space import SearchSpace

        raise NasctlError(f"supernet {loaded.path!r} has space {loaded.space.describe()}, but run "
                          f"{str(run_dir)!r} searches {SearchSpace.from_dict(recorded).describe()} "
                          f"({where}): "
                          f"put the run's own supernet back, or start a new search with this one")
    digest = sha256_file(loaded.path)
    if record_path.is_file():
        want = _read_json(record_path).get("sha256")
        if want and want != digest:
            raise NasctlError(f"supernet {loaded.path!r} is not the checkpoint run {str(run_dir)!r} searched "
                              f"(sha256 {digest[:12]}, recorded {want[:12]} in {record_path.name}): put the "
                              f"run's own supernet back, or start a new search with this one")
    for genome in list(archive.records)[:1000]:
        try:
            loaded.space.parse(genome)
        except GenomeError as e:
            raise NasctlError(f"archive.jsonl of run {str(run_dir)!r} holds {genome!r}, which is not a "
                              f"subnet of supernet {loaded.path!r} ({e}): this supernet is not the run's"
                              ) from e
    return {"path": _portable(loaded.path, run_dir), "sha256": digest, "space": space}


def _portable(path: str | Path, run_dir: Path) -> str:
    """A path inside the run folder is stored relative to it, so a moved or copied run still works."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(run_dir.resolve()))
    except ValueError:
        return str(p)


def _no_feasible_message(cfg: SearchConfig, archive: Archive) -> str:
    recs = list(archive.records.values())
    limits = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in cfg.constraints().items())
    if not recs:
        return f"no candidate was evaluated under {limits}"
    small = min(recs, key=lambda r: (r["params"], -r["clean_acc"]))
    best = max(recs, key=lambda r: (r["clean_acc"], -r["params"]))
    return (f"no candidate met the constraints ({limits}): of {len(recs)} evaluated, the smallest has "
            f"{small['params']:,} params ({small['clean_acc']:.1f} % clean), the most accurate "
            f"{best['clean_acc']:.1f} % clean ({best['params']:,} params); relax the constraints and "
            f"start a new search (this run's archive keeps every evaluation)")


def execute(cfg: SearchConfig, run_dir: Path, callbacks: SearchCallbacks | None = None,
            train_callbacks=None, data: DataSplits | None = None,
            latency: LatencyProvider | None = None) -> Path:
    """Run (or continue) the search in ``run_dir``; returns the path of ``pareto.json``.

    Holds the run folder's lock throughout, so a second process cannot resume the same run at once.
    ``data``: splits in hand instead of the data set ``cfg.dataset`` names (see :func:`search`);
    ``latency``: where ``latency_ms`` comes from (see :func:`search`).
    """
    with run_lock(run_dir):
        return _execute(cfg, run_dir, callbacks or SearchCallbacks(), train_callbacks, data, latency)


def _execute(cfg: SearchConfig, run_dir: Path, callbacks: SearchCallbacks, train_callbacks,
             given: DataSplits | None = None, latency_provider: LatencyProvider | None = None) -> Path:
    t0 = time.perf_counter()
    stages: dict[str, float] = {}  # wall seconds per stage of this invocation (a resume redoes less)
    lap = t0

    def stage_done(name: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        stages[name] = round(now - lap, 1)
        lap = now
        log.info("%s: %.0f s", name.replace("_", " "), stages[name])

    objectives = parse_objectives(cfg.objectives)
    ckpt_path = cfg.supernet or str(_train_first(cfg, run_dir, train_callbacks, given))
    if not cfg.supernet:
        stage_done("supernet_training")
    loaded = load_supernet(ckpt_path, expect_space=_expected_space(cfg))
    if loaded.dataset["name"] != cfg.dataset:
        raise NasctlError(f"supernet {loaded.path!r} was trained on {loaded.dataset['name']!r}, "
                          f"not {cfg.dataset!r}: "
                          f"pass --dataset {loaded.dataset['name']} or another --supernet")
    archive = Archive(run_dir / "archive.jsonl")
    record = check_supernet_belongs(run_dir, loaded, archive)
    if not (run_dir / SUPERNET_RECORD).is_file():
        atomic_write_json(run_dir / SUPERNET_RECORD, record)
    eps = cfg.eps if cfg.eps is not None else loaded.eps
    if given is None:
        data = supernet_data({**loaded.config, "dataset": cfg.dataset}, cfg.data_dir, cfg.seed)
    else:  # the caller's splits, cut as the supernet's trainer cut them
        seed = int(loaded.config.get("seed", cfg.seed))
        data = subset_train(given, loaded.config.get("train_subset"), seed)
    data = first_test_images(data, cfg.test_size)  # the front and the fine-tuned members are scored there
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world()[1] > 1:  # torchrun: each rank its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    settings = EvalSettings(pgd_steps=cfg.pgd_steps, val_size=cfg.val_size, calib_batches=cfg.calib_batches)
    evaluator = CandidateEvaluator(loaded.supernet, data, eps, settings, seed=cfg.seed, device=device)
    if len(archive):
        log.info("archive.jsonl holds %d evaluated subnets: they are reused, not re-evaluated", len(archive))
    latency = _latency_source(cfg, loaded, latency_provider)
    if latency is not None:
        log.info("latency_ms from %s", latency.spec.describe())
    with contextlib.ExitStack() as stack:
        pool = _worker_pool(cfg, stack, loaded, data, evaluator, device)
        evaluate_many = None
        if pool is not None:
            def evaluate_many(genomes):
                return pool.map(candidate_task, [g.encode() for g in genomes], lambda g: f"candidate {g}")
        state = SearchState(loaded.space, objectives, evaluator.accuracy,
                            sizes_fn(loaded.space, loaded.dataset, latency), archive, cfg, callbacks,
                            evaluate_many)
        lap = time.perf_counter()  # loading the supernet and the data is not the search
        try:
            result = run_generations(state, cfg, run_dir / "history.json")
            stage_done("search")
            items = [(rec["genome"], cfg.final_steps, cfg.final_restarts) for rec in result.front]
            measures = latency is not None and latency.spec.kind == "lut" and cfg.check_latency
            plan = None
            if pool is not None and result.front and cfg.finetune_members and not measures:
                # one queue for both stages: the fine-tunings largest first, then the front's short final
                # evaluations, which fill the workers left idle at the end of the fine-tunings (a latency
                # check measures between the two, on a quiet machine, so it keeps them apart)
                plan = plan_finetune(cfg, run_dir, result.front)
                finals = finetune_with_finals(plan, loaded, data, eps, result.front, pool, items, stage_done)
            elif pool is not None:
                finals = list(pool.map(final_task, items, lambda it: f"front member {it[0]}"))
            else:
                finals = [final_evaluation(evaluator, Genome.decode(g), data.test, steps, restarts)
                          for g, steps, restarts in items]
            # strong re-evaluation on the test split
            front = [{**rec, **fin, "rank": 0} for rec, fin in zip(result.front, finals)]
            if plan is None:
                stage_done("front_evaluation")
            latency_check = run_latency_check(front, latency, cfg.max_latency_ms, cfg.check_latency)
            if measures:
                stage_done("latency_check")  # a resume measures again (answered from the store's cache)
            if plan is not None:
                record_finetuned(cfg, plan, front)
            elif front and cfg.finetune_members:
                finetune_front(cfg, run_dir, loaded, data, eps, front, device, pool)
                stage_done("finetune_stage")
        except WorkerDied as e:
            raise WorkerDied(f"{e}: continue with nasctl search --resume {run_dir}") from None
    history = json.loads((run_dir / "history.json").read_text())["generations"]
    meta = {"run": run_dir.name, "dataset": cfg.dataset, "classes": list(data.info.classes),
            "data_dir": cfg.data_dir,
            "supernet": record["path"], "supernet_sha256": record["sha256"],
            "space": loaded.space.to_dict(), "eps": eps, "algorithm": cfg.algorithm,
            "objectives": list(objectives), "constraints": cfg.constraints(),
            "pop_size": cfg.pop_size, "generations": cfg.generations, "mutation_genes": cfg.mutation_genes,
            "finetune": {"members": cfg.finetune_members, "epochs": cfg.finetune_epochs,
                         "select": cfg.finetune_select, "select_every": cfg.finetune_select_every,
                         "patience": cfg.finetune_patience, "rule": PICK_RULE,
                         "recipe": _finetune_recipe(),
                         "tradeoffs": {t: TRADEOFFS[t] for t in cfg.tradeoffs()},
                         "autoattack": (AA_LABELS.get(cfg.finetune_autoattack, "off")
                                        if cfg.finetune_members else "off"),
                         "autoattack_scope": cfg.finetune_autoattack_scope},
            "seed": cfg.seed,
            "train_subset": loaded.config.get("train_subset"),
            "evaluations": result.evaluations, "search_attack": evaluator.attack.to_dict(),
            "val_images": len(evaluator.val), "final_attack": front[0]["final_attack"] if front else None,
            "final_images": front[0]["final_images"] if front else None,
            "reference_point": HV_REFERENCE, "scale": state.scale,
            "latency": latency.provenance if latency is not None else None,
            "latency_check": latency_check,
            "bn_calibration": evaluator.calibration.to_dict(),  # export prepares the subnet the same way
            "seconds": time.perf_counter() - t0, "stage_seconds": stages}
    write_outputs(run_dir, loaded.space, meta, list(archive.records.values()), front, history)
    if not front:
        raise NasctlError(_no_feasible_message(cfg, archive))
    return run_dir / "pareto.json"


def _worker_pool(cfg: SearchConfig, stack: contextlib.ExitStack, loaded: LoadedSupernet, data: DataSplits,
                 evaluator: CandidateEvaluator, device) -> WorkerPool | RankPool | None:
    """The run's worker processes (``cfg.workers``), or None for one process. On a CPU ``auto`` starts one
    one-thread worker per thread this process was given (``--threads``, ``OMP_NUM_THREADS``, the cores),
    so the run never takes more cores than asked."""
    if world()[1] > 1:  # torchrun: the ranks are the workers, each with the run it already loaded
        log.info("%d torchrun ranks share the candidates, the front and the fine-tune stage", world()[1])
        state = SearchWorker(loaded, data, evaluator, device)
        return stack.enter_context(RankPool(state, device=str(device)))
    cores = torch.get_num_threads() if device.type == "cpu" else None
    n = resolve_workers(cfg.workers, str(device), cores, cfg.workers_per_gpu)
    if n <= 1:
        return None
    log.info("%d worker processes (%s, 1 thread each) for the candidates, the front and the fine-tune "
             "stage", n, device)
    initargs = (loaded.path, data, evaluator.eps, evaluator.s, evaluator.seed)
    return stack.enter_context(WorkerPool(n, init_search_worker, initargs, threads=1, device=str(device)))


@dataclass
class FinetunePlan:
    """The fine-tune stage's work: the picked front indices and the knee, one job per (pick, trade-off)
    in the serial order, the results read back from a resumed run's folders, and what is left to do."""

    picks: list[int]
    tradeoffs: tuple[str, ...]
    jobs: list[tuple[int, int, str, FinetuneConfig, Path]]  # (pick number, front index, trade-off, config,
    results: dict[tuple[int, str], dict[str, Any]]          # folder); results by (front index, trade-off)
    todo: list[tuple[int, int, str, FinetuneConfig, Path]]
    calibration: BNCalibration
    knee: int
    run_dir: Path

    def folder(self, i: int, tradeoff: str) -> Path:
        return next(sub for _, j, t, _, sub in self.jobs if (j, t) == (i, tradeoff))


def plan_finetune(cfg: SearchConfig, run_dir: Path, front: list[dict[str, Any]]) -> FinetunePlan:
    """Which members the fine-tune stage trains, with which recipe, into which folder; a member whose
    ``result.json`` exists is read back, so a resumed run fine-tunes only what is left. Needs the front's
    genomes and search objectives only (not its final evaluation)."""
    knee = knee_index(front, parse_objectives(cfg.objectives))
    tradeoffs = cfg.tradeoffs()
    picks = spread_picks(front, knee, cfg.finetune_members, cover_decades=True)
    calibration = BNCalibration(batches=cfg.calib_batches, seed=cfg.seed)  # as the search scored them
    jobs = []
    for n, i in enumerate(picks, 1):
        attacked = cfg.finetune_autoattack_scope == "all" or front[i]["params"] <= front[knee]["params"]
        for tradeoff in tradeoffs:
            fcfg = replace(cfg.finetune_config(), tradeoff=tradeoff,
                           autoattack=cfg.finetune_autoattack if attacked else "off")
            # the robust recipe keeps the folder name of runs from before the trade-off control
            suffix = "" if tradeoff == "robust" else f"-{tradeoff}"
            genome = front[i]["genome"]
            sub = run_dir / "finetune" / f"{front[i]['params']}-{zlib.crc32(genome.encode()):08x}{suffix}"
            jobs.append((n, i, tradeoff, fcfg, sub))
    results: dict[tuple[int, str], dict[str, Any]] = {}
    todo = []
    for n, i, tradeoff, fcfg, sub in jobs:
        if (sub / "result.json").is_file():  # done before a resume
            results[i, tradeoff] = _read_json(sub / "result.json")
        else:
            todo.append((n, i, tradeoff, fcfg, sub))
    return FinetunePlan(picks, tradeoffs, jobs, results, todo, calibration, knee, run_dir)


def finetune_front(cfg: SearchConfig, run_dir: Path, loaded: LoadedSupernet, data, eps: float,
                   front: list[dict[str, Any]], device, pool: WorkerPool | RankPool | None = None) -> None:
    """The fine-tune stage: train ``cfg.finetune_members`` front members on their own and record
    ``finetuned_clean_acc``, ``finetuned_adv_acc`` and ``finetuned_checkpoint`` in their front entries.

    Each member gets ``<run>/finetune/<params>-<crc>/`` with ``subnet.pt`` and ``result.json``; a member
    whose ``result.json`` exists is read back, so a resumed run fine-tunes only what is left.
    """
    plan = plan_finetune(cfg, run_dir, front)
    if pool is None:
        for n, i, tradeoff, fcfg, sub in plan.todo:
            _announce(plan, front, n, i, tradeoff, fcfg, "fine-tuning")
            sub.mkdir(parents=True, exist_ok=True)
            model, result = finetune_inherited(loaded.supernet, data, front[i]["genome"], fcfg,
                                               plan.calibration, eps, device)
            plan.results[i, tradeoff] = save_member(model, loaded, fcfg, eps, sub, _source(plan, loaded, i),
                                                    result)
    else:
        finetune_with_finals(plan, loaded, data, eps, front, pool)
    record_finetuned(cfg, plan, front)


def finetune_with_finals(plan: FinetunePlan, loaded: LoadedSupernet, data, eps: float,
                         front: list[dict[str, Any]], pool: WorkerPool | RankPool,
                         finals: list[tuple[str, int, int]] = (), stage_done=None) -> list[dict[str, Any]]:
    """The plan's fine-tunings on the workers, the largest members first so no worker is left alone with
    the longest one at the end, each saved as soon as it is done (a failure loses no other); then the
    ``finals`` (front members' final evaluations, :func:`.workers.final_task`) in the same queue, also
    largest first, which are returned in their given (front) order. ``stage_done`` marks
    ``front_evaluation`` when the last final is in and ``finetune_stage`` when the last fine-tuning is."""
    todo = sorted(plan.todo, key=lambda job: (-front[job[1]]["params"], job[0], job[2]))
    items = [("finetune", (front[i]["genome"], fcfg, plan.calibration, eps)) for _, i, _, fcfg, _ in todo]
    # the finals largest first too: in front order the largest members' evaluations came last and left
    # one worker alone with them at the end (measured: a 7 s tail of 244 s on 2 workers)
    order = sorted(range(len(finals)), key=lambda j: (-front[j]["params"], j))
    items += [("final", finals[j]) for j in order]
    labels = lambda it: (f"fine-tuning {it[1][1].tradeoff} of {it[1][0]}" if it[0] == "finetune"  # noqa: E731
                         else f"front member {it[1][0]}")
    out: dict[int, dict[str, Any]] = {}
    left = {"finetune": len(todo), "final": len(finals)}
    names = {"finetune": "finetune_stage", "final": "front_evaluation"}
    if stage_done is not None and not todo:  # a resumed run with every member fine-tuned already
        stage_done(names["finetune"])
    for k, answer in pool.map_unordered(stage_task, items, labels):
        kind = items[k][0]
        if kind == "final":
            out[order[k - len(todo)]] = answer
        else:
            result, state = answer
            n, i, tradeoff, fcfg, sub = todo[k]
            _announce(plan, front, n, i, tradeoff, fcfg, "fine-tuned")
            sub.mkdir(parents=True, exist_ok=True)
            model = loaded.supernet.extract(Genome.decode(front[i]["genome"])).cpu()
            model.load_state_dict(state)
            plan.results[i, tradeoff] = save_member(model, loaded, fcfg, eps, sub, _source(plan, loaded, i),
                                                    result)
        left[kind] -= 1
        if stage_done is not None and not left[kind]:  # the two stages overlap: each is marked when its
            stage_done(names[kind])                     # last item is in, so the stages sum to the wall time
    return [out[j] for j in range(len(finals))]


def _source(plan: FinetunePlan, loaded: LoadedSupernet, i: int) -> dict[str, Any]:
    return {"run": ".", "front_index": i, "knee": i == plan.knee,
            "supernet": _portable(loaded.path, plan.run_dir), "weights": "inherited"}


def _announce(plan: FinetunePlan, front, n: int, i: int, tradeoff: str, fcfg: FinetuneConfig,
              verb: str) -> None:
    rec = front[i]
    log.info("%s %d/%d (%s): %s (%s params, %d epochs)", verb, n, len(plan.picks), tradeoff, rec["genome"],
             f"{rec['params']:,}", fcfg.epochs)


def record_finetuned(cfg: SearchConfig, plan: FinetunePlan, front: list[dict[str, Any]]) -> None:
    """Each picked member's fine-tuned numbers into its front entry (the first trade-off's as the
    ``finetuned_*`` fields, every trade-off's under ``finetuned_tradeoffs``)."""
    for i in plan.picks:
        entries: dict[str, dict[str, Any]] = {}
        for tradeoff in plan.tradeoffs:
            result = plan.results[i, tradeoff]
            sub = plan.folder(i, tradeoff)
            entries[tradeoff] = {
                "clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"],
                "aa_acc": result.get("aa_acc"), "epoch": result.get("chosen_epoch", result["epochs"]),
                "epochs_run": result.get("epochs_run", result["epochs"]),
                "checkpoint": str((sub / result["checkpoint"]).relative_to(plan.run_dir))}
        first = entries[plan.tradeoffs[0]]
        front[i].update(finetuned_clean_acc=first["clean_acc"], finetuned_adv_acc=first["adv_acc"],
                        finetuned_aa_acc=first["aa_acc"], finetuned_tradeoff=plan.tradeoffs[0],
                        finetuned_epochs=cfg.finetune_epochs, finetuned_epoch=first["epoch"],
                        finetuned_epochs_run=first["epochs_run"], finetuned_select=cfg.finetune_select,
                        finetuned_checkpoint=first["checkpoint"], finetuned_tradeoffs=entries)


def _finetune_recipe() -> str:
    f = FinetuneConfig()
    return (f"PGD-{f.attack_steps} adversarial training (step eps/4), SGD lr {f.lr:g} Nesterov cosine, "
            f"batch {f.batch_size}, from inherited weights with BN recalibrated")


def search(cfg: SearchConfig, callbacks: SearchCallbacks | None = None, train_callbacks=None,
           data: DataSplits | None = None, latency: LatencyProvider | None = None) -> Path:
    """Start a new search run folder under ``cfg.run_root``; returns the path of ``pareto.json``.

    ``data``: ready :class:`DataSplits` (a notebook's own arrays) instead of loading ``cfg.dataset``;
    ``cfg.dataset`` becomes their ``info.name``, and a name nasctl cannot load gets the ``auto`` space.
    A resume of such a run needs the same splits again (:func:`resume_search`'s ``data``).
    ``latency``: the provider of ``cfg.latency_source`` (:class:`nasctl.profiling.LatencySources`),
    needed only when the config names one."""
    if data is not None:
        cfg.dataset = data.info.name
    cfg.validate()
    check_latency_provider(cfg, latency)  # a bad --latency-source fails before anything is created
    if cfg.supernet is not None:
        _check_supernet_folder(cfg.supernet)
        load_supernet(cfg.supernet, expect_space=_expected_space(cfg))  # fail before creating anything
    with process_group(str(resolve_device(cfg.device))):  # under torchrun: one group for the whole run
        rank, _ = world()
        run_dir = Path(broadcast(str(cfg.new_run_dir("search")) if rank == 0 else None))
        if rank > 0:  # the other ranks run the same run in a private copy of the folder: rank 0 writes
            with _rank_folder(run_dir, rank) as own:
                write_run_config(own, "search", cfg)
                execute(cfg, own, callbacks, train_callbacks, data, latency)
            return run_dir / "pareto.json"
        # bad input found before any work leaves no empty run behind; execute() takes the folder's lock
        with run_scope(run_dir, lock=False):
            write_run_config(run_dir, "search", cfg)
            log.info("run folder: %s", run_dir)
            return execute(cfg, run_dir, callbacks, train_callbacks, data, latency)


@contextlib.contextmanager
def _rank_folder(run_dir: Path, rank: int):
    """A torchrun rank > 0's own copy of the run folder (what a resume needs: the archive, the finished
    fine-tunings, the supernet training's checkpoint), removed when the run ends: every rank runs the
    same code, and only rank 0's writes land in the user's folder."""
    import shutil
    import tempfile

    own = Path(tempfile.mkdtemp(prefix=f"nasctl-rank{rank}-"))
    try:
        if run_dir.is_dir():
            shutil.copytree(run_dir, own, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)


def _check_supernet_folder(supernet: str) -> None:
    """``--supernet`` takes a ``supernet.pt`` or the training run that holds one. A folder of another kind
    (a search run, an export, a study) is one line naming what it is, and for a search run the supernet
    it searched, instead of a checkpoint reader's complaint about a directory."""
    from nasctl.runfolder import describe, folder_kind

    path = Path(supernet)
    if not path.is_dir() or any((path / n).exists() for n in ("supernet.pt", "checkpoint.pt", "subnet.pt")):
        return  # a file, or a run folder read_checkpoint resolves: its own checks apply
    record = _read_json(path / SUPERNET_RECORD) if (path / SUPERNET_RECORD).is_file() else {}
    searched = Path(str(record.get("path") or ""))
    searched = searched if searched.is_absolute() else path / searched
    if record.get("path") and searched.is_file():
        fix = f"to search the supernet this run searched, pass --supernet {searched}"
    else:
        fix = "give a supernet.pt written by 'nasctl train' or its run folder (runs/train/<stamp>-<name>)"
    what = describe(path) + (", not a trained supernet" if folder_kind(path) is not None else "")
    raise NasctlError(f"--supernet {supernet!r} is {what}: {fix}")


def config_from_run(doc: dict[str, Any], source: str = "the run's config.json") -> SearchConfig:
    """The SearchConfig a run folder's ``config.json`` describes, as that run used it."""
    values = doc.get("config")
    if not isinstance(values, dict):
        raise NasctlError(f"{source} has no 'config' mapping: it was not written by nasctl search")
    # runs started before --mutation-genes existed used pymoo's default rate: keep it so they retrace exactly
    # and runs from before the fine-tune stage resume without one, so they end as they would have
    # and those from before the trade-off control and AutoAttack fine-tune one robust entry, unattacked
    return build_config(SearchConfig, {"mutation_genes": 1.0, "finetune_members": 0,
                                       "finetune_tradeoff": "robust", "finetune_autoattack": "off",
                                       "finetune_autoattack_scope": "all", **values},
                        source)


def resume_search(run_dir: str | Path, callbacks: SearchCallbacks | None = None,
                  train_callbacks=None, data: DataSplits | None = None,
                  latency: LatencyProvider | None = None) -> Path:
    """Continue a search run after a crash or interrupt, with the run's own config and seed (and the
    ``data`` it was started with, if :func:`search` was given splits)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise NasctlError(f"--resume {str(run_dir)!r} is not a search run folder (no config.json): "
                          f"give runs/search/<stamp>-<name>")
    doc = _read_json(cfg_path)
    if doc.get("command") != "search":
        from nasctl.runfolder import describe

        raise NasctlError(f"--resume {str(run_dir)!r} is {describe(run_dir)}, not a search run: give the "
                          f"folder of a 'nasctl search' run (runs/search/<stamp>-<name>)")
    cfg = config_from_run(doc, f"{str(cfg_path)!r}")
    log.info("resuming search %s", run_dir)
    check_latency_provider(cfg, latency)
    with process_group(str(resolve_device(cfg.device))):
        rank, _ = world()
        if rank > 0:
            with _rank_folder(run_dir, rank) as own:
                execute(cfg, own, callbacks, train_callbacks, data, latency)
            return run_dir / "pareto.json"
        with run_scope(run_dir, fresh=False, lock=False):
            return execute(cfg, run_dir, callbacks, train_callbacks, data, latency)
