"""The fine-tuning of chosen subnets of a search run: ``nasctl finetune`` and the search's fine-tune stage.

``nasctl finetune --run RUN --pick knee`` writes ``runs/finetune/<stamp>/`` with ``config.json``,
``subnet.pt`` (a self-describing subnet checkpoint that ``nasctl eval --checkpoint`` and ``nasctl
export --checkpoint`` take) and ``result.json`` (clean and PGD test accuracy, the attack).
The trainer itself (recipe, trade-offs, epoch selection) is :mod:`nasctl.nas.training.subnet`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nasctl.core import atomic_write_json, resolve_device
from nasctl.runfolder import run_scope, write_run_config

from ..attacks.autoattack import autoattack_accuracy, pgd_overstates
from ..data import DataSplits, first_test_images, supernet_data
from ..search.evaluator import final_accuracy
from ..space import Genome
from ..supernet import BNCalibration, init_weights, prepare_subnet
from ..supernet.checkpoint import load_supernet
from ..supernet.subnet_ckpt import save_subnet
from ..training.subnet import FinetuneConfig, adversarial_train
from .select import latest_run, pick_from_run

log = logging.getLogger(__name__)


def train_and_save(model: nn.Module, genome: str, loaded, data: DataSplits, cfg: FinetuneConfig, eps: float,
                   out_dir: Path, source: dict[str, Any], device: torch.device,
                   on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Fine-tune (or train from scratch) ``model``, evaluate it with the final attack, and write
    ``subnet.pt`` then ``result.json`` into ``out_dir`` (the result last: its presence means done)."""
    result = train_member(model, genome, data, cfg, eps, device, on_epoch)
    return save_member(model, loaded, cfg, eps, out_dir, source, result)


def train_member(model: nn.Module, genome: str, data: DataSplits, cfg: FinetuneConfig, eps: float,
                 device: torch.device,
                 on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place with ``cfg``'s recipe, keep the chosen epoch, and score it with the final
    attack (and AutoAttack): the numbers of ``result.json``, without the files (:func:`save_member`).
    Writes nothing, so a worker process can run it and hand the weights back."""
    if cfg.from_scratch:
        init_weights(model, cfg.seed)
    recipe = cfg.recipe(eps)
    stats = adversarial_train(model, data, recipe, device, on_epoch, cfg.selection())
    selection = stats["selection"]
    acc = final_accuracy(model, genome, data.test, eps, cfg.seed + 1, cfg.final_steps, cfg.final_restarts,
                         device)
    aa = None
    if cfg.autoattack != "off":  # the same test images as PGD
        aa = autoattack_accuracy(model, data.test, eps, cfg.seed + 1, cfg.autoattack)
        if pgd_overstates(acc["adv_acc"], aa["acc"]):
            log.warning("%s: %s accuracy %.1f %% is %.1f points below PGD-%d x%d (%.1f %%): PGD overstates "
                        "this model's robustness; trust the AutoAttack number", genome, aa["attack"],
                        aa["acc"], acc["adv_acc"] - aa["acc"], cfg.final_steps, cfg.final_restarts,
                        acc["adv_acc"])
    model.cpu()
    return {"genome": genome, "params": int(sum(p.numel() for p in model.parameters())),
            "from_scratch": cfg.from_scratch, "epochs": cfg.epochs,
            "chosen_epoch": selection["chosen_epoch"], "epochs_run": selection["epochs_run"],
            "selection": selection, "clean_acc": acc["clean_acc"],
            "adv_acc": acc["adv_acc"], "attack": acc["attack"], "split": "test", "images": acc["images"],
            "aa_acc": aa["acc"] if aa else None, "aa_attack": aa, "tradeoff": cfg.tradeoff,
            "recipe": asdict(recipe), "eps": eps, "train_seconds": stats["seconds"],
            "images_per_s": stats["images_per_s"]}


def finetune_inherited(supernet, data: DataSplits, genome: str, cfg: FinetuneConfig,
                       calibration: BNCalibration, eps: float,
                       device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A front member fine-tuned from its inherited weights, BatchNorm prepared as the search scored it:
    the fine-tune stage's one item, in the run's process or in a worker. ``(trained model, result)``;
    nothing is written (:func:`save_member`)."""
    model = prepare_subnet(supernet.extract(Genome.decode(genome)), data.train, calibration)
    return model, train_member(model, genome, data, cfg, eps, device)


def save_member(model: nn.Module, loaded, cfg: FinetuneConfig, eps: float, out_dir: Path,
                source: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Write the trained ``model`` as ``subnet.pt``, then ``result.json`` (last: its presence means done);
    returns the result as written."""
    ckpt = save_subnet(out_dir / "subnet.pt", model, result["genome"], loaded.space, loaded.dataset, eps,
                       asdict(cfg), loaded.config, source, result["chosen_epoch"])
    out = {**result, "checkpoint": ckpt.name, "source": source}
    keys = list(result)  # result.json's order as before: the checkpoint after eps, the source last
    at = keys.index("eps") + 1
    out = {k: out[k] for k in [*keys[:at], "checkpoint", *keys[at:], "source"]}
    atomic_write_json(out_dir / "result.json", out)
    return out


def _search_run_config(run_dir: str) -> dict[str, Any]:
    """The search run's settings from its ``config.json`` ({} when it is missing or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text()).get("config", {})
    except (OSError, ValueError):
        return {}


def search_test_split(data, run_dir: str):
    """The test split the search run scored its front on (its ``test_size`` first images, or all)."""
    return first_test_images(data, _search_run_config(run_dir).get("test_size"))


def _search_attack_for_selection(cfg: FinetuneConfig, run_dir: str) -> None:
    """Choose the epoch with the search run's validation attack (its ``val_size`` and ``pgd_steps``)."""
    run_cfg = _search_run_config(run_dir)
    cfg.select_val_size = int(run_cfg.get("val_size") or cfg.select_val_size)
    cfg.select_pgd_steps = int(run_cfg.get("pgd_steps") or cfg.select_pgd_steps)


def finetune(cfg: FinetuneConfig, on_epoch: Callable[[int, float], None] | None = None) -> Path:
    """``nasctl finetune``: train one front member of a search run in a new run folder; returns the
    path of its ``result.json``. The search run itself is only read, never written."""
    cfg.validate()
    pick = pick_from_run(cfg.run or latest_run(cfg.run_root, instead=None), cfg.pick, instead=None)
    loaded = load_supernet(pick.checkpoint)
    genome = loaded.space.parse(pick.genome)
    eps = float(cfg.eps if cfg.eps is not None else pick.eps if pick.eps is not None else loaded.eps)
    data = supernet_data({**loaded.config, "dataset": loaded.dataset["name"]}, pick.data_dir)
    data = search_test_split(data, pick.run_dir)  # scored on the same test images as the run's front
    _search_attack_for_selection(cfg, pick.run_dir)  # the epoch is chosen by the run's own val attack
    device = resolve_device(cfg.device)
    out_dir = cfg.new_run_dir("finetune", genome.encode()[:80])
    source = {"run": pick.run_dir, "front_index": pick.index, "knee": pick.is_knee,
              "supernet": loaded.path, "weights": "scratch" if cfg.from_scratch else "inherited"}
    with run_scope(out_dir):
        write_run_config(out_dir, "finetune", cfg, {"genome": genome.encode(), "source": source,
                                                    "eps": eps})
        model = loaded.supernet.extract(genome)
        calib = pick.bn_calibration or {}
        # inherited BatchNorm statistics are a mixture over every path: start from the subnet's own,
        # computed as the search computed them when it scored the subnet (one BNCalibration)
        prepare_subnet(model, data.train, BNCalibration(batches=int(calib.get("batches", 4)),
                                                        seed=int(calib.get("seed", cfg.seed))))
        train_and_save(model, genome.encode(), loaded, data, cfg, eps, out_dir, source, device, on_epoch)
    return out_dir / "result.json"


PICK_RULE = ("K members spread evenly over log(params), the knee among them, plus one more for every "
             "decade of params (1-10 K, 10-100 K, ...) that has front members but no pick; all of them when "
             "K >= the front's size")


def spread_picks(front: list[dict[str, Any]], knee: int, k: int, cover_decades: bool = False) -> list[int]:
    """``k`` front indices spread evenly over log(parameters) -- tiny nets matter as much as large
    ones -- with the knee always among them (it replaces the pick nearest to it).

    ``cover_decades`` (the search's fine-tune stage, :data:`PICK_RULE`): every decade of parameters that
    holds front members gets a pick, the member nearest the middle of that decade's members in
    log(params), so that no size range a user may need ships only inherited weights."""
    if k <= 0 or not front:
        return []
    picks = _spread(front, knee, k)
    if cover_decades:
        logp = np.log10([max(float(r["params"]), 1.0) for r in front])
        decade = np.floor(logp)
        for d in sorted(set(decade.tolist()) - {decade[i] for i in picks}):
            members = [i for i in range(len(front)) if decade[i] == d]
            mid = (logp[members].min() + logp[members].max()) / 2
            picks.append(min(members, key=lambda i: (abs(logp[i] - mid), i)))
    return sorted(set(picks), key=lambda i: (front[i]["params"], i))


def _spread(front: list[dict[str, Any]], knee: int, k: int) -> list[int]:
    logp = np.log([max(float(r["params"]), 1.0) for r in front])
    picks: list[int] = []
    for target in np.linspace(logp.min(), logp.max(), min(k, len(front))):
        free = [i for i in range(len(front)) if i not in picks]
        picks.append(min(free, key=lambda i: (abs(logp[i] - target), i)))
    if 0 <= knee < len(front) and knee not in picks:
        picks[min(range(len(picks)), key=lambda j: abs(logp[picks[j]] - logp[knee]))] = knee
    return picks
