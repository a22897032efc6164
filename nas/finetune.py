"""Adversarial training of one static subnet: fine-tuned from inherited weights, or from scratch.

Inherited weights are shared by thousands of paths, so a subnet's own accuracy after a short
training of its own is what a user deploys (and what TAM-NAS's question (c) compares with training
from scratch). One trainer for every static subnet -- the search's fine-tune stage, ``nasctl
finetune``, the baselines and ranking benchmarks: the supernet's recipe (SGD + Nesterov, cosine
schedule, PGD-7 with step eps/4) applied to a plain ``nn.Module``.

``nasctl finetune --run RUN --pick knee`` writes ``runs/finetune/<stamp>/`` with ``config.json``,
``subnet.pt`` (a self-describing subnet checkpoint that ``nasctl eval --checkpoint`` and ``nasctl
export --checkpoint`` take) and ``result.json`` (clean and PGD test accuracy, the attack).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nasctl.core import atomic_write_json, resolve_device

from .attacks import ATTACKS, PGD, evaluate
from .data import DataSplits
from .errors import NasctlError, RunInterrupted
from .optim import sgd_cosine
from .runs import RunFolder

log = logging.getLogger(__name__)


@dataclass
class SubnetTrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True  # the supernet trainer's choice
    weight_decay: float = 5e-4
    attack: str = "pgd"
    attack_steps: int = 7
    eps: float = 0.1
    # epochs over which the training eps ramps up linearly from eps/eps_warmup (0: full eps from the
    # start); the supernet trainer ramps over 10 epochs
    eps_warmup: int = 0
    seed: int = 0


def reset_weights(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer (train from scratch with the same architecture), from ``seed`` alone."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()  # as torch's kaiming_normal_(mode="fan_out")
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.in_features ** 0.5
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * bound - bound)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    return model


def adversarial_train(model: nn.Module, data: DataSplits, cfg: SubnetTrainConfig,
                      device: torch.device | str = "cpu",
                      on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place on adversarial examples; returns throughput and the last loss.

    ``on_epoch(epoch, loss)`` is called after each epoch (progress display).
    """
    model.to(device)
    opt, sched = sgd_cosine(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs,
                            cfg.nesterov)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    images, t0, loss = 0, time.perf_counter(), torch.tensor(0.0)
    for epoch in range(cfg.epochs):
        eps = cfg.eps * min(1.0, (epoch + 1) / cfg.eps_warmup) if cfg.eps_warmup > 0 else cfg.eps
        attack = ATTACKS[cfg.attack].for_training(eps, cfg.attack_steps, eps / 4)
        model.train()
        for x, y in data.train.batches(cfg.batch_size, shuffle=True, generator=data_gen, drop_last=True):
            x, y = x.to(device), y.to(device)
            x_adv = attack(model, x, y, attack_gen)
            clean_logits = model(x) if attack.needs_clean_logits else None
            loss = attack.training_loss(model(x_adv), y, clean_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    return {"images_per_s": images / max(seconds, 1e-9), "seconds": seconds, "last_loss": loss.item()}


def robust_accuracy(model: nn.Module, split, eps: float, steps: int = 20,
                    seed: int = 0) -> tuple[float, float]:
    """(clean %, PGD-``steps`` %) in eval mode, on the model's own device."""
    device = next(model.parameters()).device
    r = evaluate(model, split.batches(256), PGD(eps=eps, steps=steps), device,
                 torch.Generator(device=device).manual_seed(seed))
    return r.clean_acc, r.adv_acc


# --- fine-tuning chosen subnets of a search run -------------------------------------------------------
@dataclass
class FinetuneConfig(RunFolder):
    """``nasctl finetune``: which subnet, how long, and the recipe (the supernet's, shorter)."""

    run: str | None = None  # search run folder; None: the newest under run_root/search
    pick: str = "knee"  # knee | INDEX | GENOME of that run's front
    from_scratch: bool = False  # re-initialise instead of starting from the inherited weights
    epochs: int = 40  # the baselines' recipe (bench/bench_baselines.py), as in the search's fine-tune stage
    lr: float = 0.05  # half the supernet's: the weights are already trained
    batch_size: int = 64
    attack_steps: int = 7  # PGD-7 with step eps/4, as in the supernet's training
    eps: float | None = None  # None: the search's
    final_steps: int = 20  # the search's final attack: PGD-20 x 3 restarts on the test split
    final_restarts: int = 3
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        from .runs import check_at_least_one, check_eps

        check_at_least_one(self, ("epochs", "batch_size", "attack_steps", "final_steps", "final_restarts"))
        if not self.lr > 0:
            raise NasctlError(f"--lr must be > 0, got {self.lr}")
        check_eps(self.eps)


def train_and_save(model: nn.Module, genome: str, loaded, data: DataSplits, cfg: FinetuneConfig, eps: float,
                   out_dir: Path, source: dict[str, Any], device: torch.device,
                   on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Fine-tune (or train from scratch) ``model``, evaluate it with the final attack, and write
    ``subnet.pt`` then ``result.json`` into ``out_dir`` (the result last: its presence means done)."""
    from .candidates import test_accuracy
    from .subnet_ckpt import save_subnet

    if cfg.from_scratch:
        reset_weights(model, cfg.seed)
    recipe = SubnetTrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                               attack_steps=cfg.attack_steps, eps=eps, seed=cfg.seed)
    stats = adversarial_train(model, data, recipe, device, on_epoch)
    acc = test_accuracy(model, genome, data.test, eps, cfg.seed + 1, cfg.final_steps, cfg.final_restarts,
                        device)
    model.cpu()
    ckpt = save_subnet(out_dir / "subnet.pt", model, genome, loaded.space, loaded.dataset, eps, asdict(cfg),
                       loaded.config, source, cfg.epochs)
    result = {"genome": genome, "params": int(sum(p.numel() for p in model.parameters())),
              "from_scratch": cfg.from_scratch, "epochs": cfg.epochs, "clean_acc": acc["clean_acc"],
              "adv_acc": acc["adv_acc"], "attack": acc["attack"], "split": "test", "images": acc["images"],
              "eps": eps, "checkpoint": ckpt.name, "train_seconds": stats["seconds"],
              "images_per_s": stats["images_per_s"], "source": source}
    atomic_write_json(out_dir / "result.json", result)
    return result


def _search_test_split(data, run_dir: str):
    """The test split the search run scored its front on (its ``test_size`` first images, or all)."""
    import json

    from .data import first_test_images

    try:
        size = json.loads((Path(run_dir) / "config.json").read_text()).get("config", {}).get("test_size")
    except (OSError, ValueError):
        size = None
    return first_test_images(data, size)


def finetune(cfg: FinetuneConfig, on_epoch: Callable[[int, float], None] | None = None) -> Path:
    """``nasctl finetune``: train one front member of a search run in a new run folder; returns the
    path of its ``result.json``. The search run itself is only read, never written."""
    from .checkpoint import load_supernet
    from .data import supernet_data
    from .runs import discard_if_unused, run_lock, write_run_config
    from .select import latest_run, pick_from_run

    cfg.validate()
    pick = pick_from_run(cfg.run or latest_run(cfg.run_root, instead=None), cfg.pick, instead=None)
    loaded = load_supernet(pick.checkpoint)
    genome = loaded.space.parse(pick.genome)
    eps = float(cfg.eps if cfg.eps is not None else pick.eps if pick.eps is not None else loaded.eps)
    data = supernet_data({**loaded.config, "dataset": loaded.dataset["name"]}, pick.data_dir)
    data = _search_test_split(data, pick.run_dir)  # scored on the same test images as the run's front
    device = resolve_device(cfg.device)
    out_dir = cfg.new_run_dir("finetune", genome.encode()[:80])
    source = {"run": pick.run_dir, "front_index": pick.index, "knee": pick.is_knee,
              "supernet": loaded.path, "weights": "scratch" if cfg.from_scratch else "inherited"}
    try:
        with run_lock(out_dir):
            write_run_config(out_dir, "finetune", cfg, {"genome": genome.encode(), "source": source,
                                                        "eps": eps})
            model = loaded.supernet.extract(genome)
            calib = pick.bn_calibration or {}
            _recalibrate_for_training(model, data, int(calib.get("seed", cfg.seed)),
                                      int(calib.get("batches", 4)))
            train_and_save(model, genome.encode(), loaded, data, cfg, eps, out_dir, source, device, on_epoch)
    except NasctlError:
        discard_if_unused(out_dir)
        raise
    except KeyboardInterrupt as e:
        raise RunInterrupted(out_dir) from e
    return out_dir / "result.json"


def _recalibrate_for_training(model: nn.Module, data: DataSplits, seed: int, batches: int = 4) -> None:
    """Inherited BatchNorm statistics are a mixture over every path: start from the subnet's own,
    computed exactly as the search computed them when it scored the subnet (one BNCalibration)."""
    from .supernet import BNCalibration, prepare_subnet

    prepare_subnet(model, data.train, BNCalibration(batches=batches, seed=seed))


def spread_picks(front: list[dict[str, Any]], knee: int, k: int) -> list[int]:
    """``k`` front indices spread evenly over log(parameters) -- tiny nets matter as much as large
    ones -- with the knee always among them (it replaces the pick nearest to it)."""
    if k <= 0 or not front:
        return []
    logp = np.log([max(float(r["params"]), 1.0) for r in front])
    picks: list[int] = []
    for target in np.linspace(logp.min(), logp.max(), min(k, len(front))):
        free = [i for i in range(len(front)) if i not in picks]
        picks.append(min(free, key=lambda i: (abs(logp[i] - target), i)))
    if 0 <= knee < len(front) and knee not in picks:
        picks[min(range(len(picks)), key=lambda j: abs(logp[picks[j]] - logp[knee]))] = knee
    return sorted(set(picks), key=lambda i: (front[i]["params"], i))
