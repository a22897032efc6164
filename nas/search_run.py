"""A whole ``nasctl search`` run: (train a supernet,) search, evaluate the front strongly, write outputs.

The run folder holds everything: ``config.json`` first, the supernet training run in ``supernet/``
when none was given, then ``archive.jsonl`` growing candidate by candidate, ``history.json`` after
each generation, and the front, plots and summary at the end. ``resume_search`` picks up any of
these stages after a crash or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from . import train as train_mod
from .checkpoint import load_supernet
from .data import load_dataset
from .errors import NasctlError
from .evaluate import CandidateEvaluator, EvalSettings, final_evaluation
from .objectives import parse_objectives
from .report import write_outputs
from .runs import make_run_dir, write_run_config
from .search import HV_REFERENCE, Archive, Callbacks, SearchConfig, SearchState, run_generations
from .space import Genome

log = logging.getLogger(__name__)


def _train_first(cfg: SearchConfig, run_dir: Path, train_callbacks) -> Path:
    """Train (or resume training) the supernet inside the search run folder."""
    sub = run_dir / "supernet"
    if (sub / "supernet.pt").exists():
        return sub / "supernet.pt"
    if (sub / "checkpoint.pt").exists():
        log.info("resuming the interrupted supernet training in %s", sub)
        return train_mod.resume_training(sub, train_callbacks)[0]
    sub.mkdir(parents=True, exist_ok=True)
    optional = {"epochs": cfg.epochs, "width_mult": cfg.width_mult}
    tcfg = train_mod.TrainConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, space=cfg.space, seed=cfg.seed,
                                 device=cfg.device, **{k: v for k, v in optional.items() if v is not None})
    tcfg.validate()
    log.info("no --supernet given: training one first (%d epochs, %s attack, %s sampling) in %s",
             tcfg.epochs, tcfg.attack, tcfg.sampling, sub)
    return train_mod.train_supernet(tcfg, train_callbacks, run_dir=sub)[0]


def _expected_space(cfg: SearchConfig):
    """The space the user asked for explicitly (--space/--width-mult), to check a given supernet."""
    if cfg.supernet is None or (cfg.space is None and cfg.width_mult is None):
        return None
    tcfg = train_mod.TrainConfig(dataset=cfg.dataset, space=cfg.space, width_mult=cfg.width_mult or 1.0)
    return train_mod.resolve_space(tcfg)


def _sizes_fn(space, info: dict[str, Any]):
    def sizes(g: Genome) -> dict[str, int]:
        args = (g, info["in_channels"], info["resolution"])
        params, macs = space.cost(*args, info["num_classes"])
        return {"params": params, "macs": macs, "int8_bytes": space.int8_bytes(*args, info["num_classes"])}

    return sizes


def execute(cfg: SearchConfig, run_dir: Path, callbacks: Callbacks | None = None,
            train_callbacks=None) -> Path:
    """Run (or continue) the search in ``run_dir``; returns the path of ``pareto.json``."""
    t0 = time.perf_counter()
    callbacks = callbacks or Callbacks()
    objectives = parse_objectives(cfg.objectives)
    ckpt_path = cfg.supernet or str(_train_first(cfg, run_dir, train_callbacks))
    loaded = load_supernet(ckpt_path, expect_space=_expected_space(cfg))
    if loaded.dataset["name"] != cfg.dataset:
        raise NasctlError(f"supernet {loaded.path!r} was trained on {loaded.dataset['name']!r}, "
                          f"not {cfg.dataset!r}: "
                          f"pass --dataset {loaded.dataset['name']} or another --supernet")
    eps = cfg.eps if cfg.eps is not None else loaded.eps
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=int(loaded.config.get("seed", cfg.seed)),
                        val_size=loaded.config.get("val_size"))
    device = train_mod.resolve_device(cfg.device)
    settings = EvalSettings(pgd_steps=cfg.pgd_steps, val_size=cfg.val_size, calib_batches=cfg.calib_batches)
    evaluator = CandidateEvaluator(loaded.supernet, data, eps, settings, seed=cfg.seed, device=device)
    archive = Archive(run_dir / "archive.jsonl")
    if len(archive):
        log.info("archive.jsonl holds %d evaluated subnets: they are reused, not re-evaluated", len(archive))
    state = SearchState(loaded.space, objectives, evaluator.accuracy, _sizes_fn(loaded.space, loaded.dataset),
                        archive, cfg, callbacks)
    result = run_generations(state, cfg, run_dir / "history.json")

    front = []
    for rec in result.front:  # strong re-evaluation on the test split
        front.append({**rec, **final_evaluation(evaluator, Genome.decode(rec["genome"]), data.test,
                                                cfg.final_steps, cfg.final_restarts), "rank": 0})
    history = json.loads((run_dir / "history.json").read_text())["generations"]
    meta = {"run": run_dir.name, "dataset": cfg.dataset, "data_dir": cfg.data_dir,
            "supernet": str(Path(ckpt_path).resolve()),
            "space": loaded.space.to_dict(), "eps": eps, "algorithm": cfg.algorithm,
            "objectives": list(objectives),
            "pop_size": cfg.pop_size, "generations": cfg.generations, "mutation_genes": cfg.mutation_genes,
            "seed": cfg.seed,
            "evaluations": result.evaluations, "search_attack": evaluator.attack.to_dict(),
            "val_images": len(evaluator.val), "final_attack": front[0]["final_attack"] if front else None,
            "final_images": front[0]["final_images"] if front else None,
            "reference_point": HV_REFERENCE, "scale": state.scale,
            "seconds": time.perf_counter() - t0}
    write_outputs(run_dir, loaded.space, meta, list(archive.records.values()), front, history)
    return run_dir / "pareto.json"


def search(cfg: SearchConfig, callbacks: Callbacks | None = None, train_callbacks=None) -> Path:
    """Start a new search run folder under ``cfg.run_root``; returns the path of ``pareto.json``."""
    cfg.validate()
    if cfg.supernet is not None:
        load_supernet(cfg.supernet, expect_space=_expected_space(cfg))  # fail before creating anything
    run_dir = make_run_dir(cfg.run_root, "search", cfg.name)
    write_run_config(run_dir, "search", cfg)
    log.info("run folder: %s", run_dir)
    return execute(cfg, run_dir, callbacks, train_callbacks)


def config_from_run(doc: dict[str, Any]) -> SearchConfig:
    """The SearchConfig a run folder's ``config.json`` describes, as that run used it."""
    # runs started before --mutation-genes existed used pymoo's default rate: keep it so they retrace exactly
    return SearchConfig(**{"mutation_genes": 1.0, **doc["config"]})


def resume_search(run_dir: str | Path, callbacks: Callbacks | None = None, train_callbacks=None) -> Path:
    """Continue a search run after a crash or interrupt, with the run's own config and seed."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise NasctlError(f"--resume {str(run_dir)!r} is not a search run folder (no config.json): "
                          f"give runs/search/<stamp>-<name>")
    doc = json.loads(cfg_path.read_text())
    if doc.get("command") != "search":
        raise NasctlError(f"--resume {str(run_dir)!r} is a {doc.get('command')!r} run, not a search run")
    cfg = config_from_run(doc)
    log.info("resuming search %s", run_dir)
    return execute(cfg, run_dir, callbacks, train_callbacks)

