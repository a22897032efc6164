"""Adversarial training of the weight-sharing supernet (``nasctl train``).

Each batch trains one or several paths of the supernet on adversarial examples crafted against
that same path: ``uniform`` samples one random subnet, ``sandwich`` trains the largest, the smallest
and ``sandwich_random`` random subnets together (the sandwich rule of BigNAS/OFA), so both ends of
the search space receive gradients every step. All paths of a step run in one forward call so the
step is a single DistributedDataParallel forward/backward under ``torchrun``.

A checkpoint is written atomically after every epoch and ``resume`` continues it bit-for-bit
(weights, optimiser, schedule, every random generator). With single-step attacks a PGD check on the
validation split runs each epoch; a collapse of PGD accuracy (catastrophic overfitting) stops
training and restores the best weights.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasctl.core import atomic_torch_save, atomic_write_text, resolve_device
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, run_scope, write_run_config
from nasctl.workers import broadcast, process_group

from ..attacks import ATTACKS, PGD, Attack, accuracy_under_attack, training_attacks
from ..data import (
    DatasetInfo,
    DataSplits,
    dataset_info,
    dataset_names,
    dataset_spec,
    default_space,
    load_dataset,
    subset_train,
)
from ..data.userdata import is_user_spec
from ..space import AUTO, Genome, SearchSpace, check_width, is_auto, space_for
from ..supernet import BNCalibration, Supernet, prepare_subnet
from ..supernet.checkpoint import FORMAT, build_supernet, check_supernet_fits, read_checkpoint
from .optim import sgd_cosine

log = logging.getLogger(__name__)

TRAIN_ATTACKS = tuple(training_attacks())  # the registry's trainable attacks (for --attack choices)


@dataclass
class TrainConfig(RunFolder):
    dataset: str = "digits"  # the embedded default: no download
    data_dir: str | None = None  # where torchvision data sets live (downloaded there when online)
    space: str | None = None  # space name, YAML path or 'auto'; None: the data set's default (default_space)
    width_mult: float = 1.0  # multiplies every channel choice (TAM-NAS question b)
    # digits: about 1 min on 2 CPU cores (uniform sampling, PGD-7); the dense digits space needs the 60
    # (30 left its subnets at about 90 / 62 % clean / PGD, the smallest far lower; BENCHMARKS.md)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.1  # SGD (Nesterov), cosine-annealed to 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    attack: str = "pgd"  # pgd | fgsm-rs | n-fgsm | trades
    eps: float | None = None  # L-inf budget on [0,1] pixels; None: the data set's default (digits 0.1)
    attack_steps: int = 7  # PGD-7 (Madry); TRADES inner steps too
    eps_warmup: int = 10  # epochs over which the training eps ramps up linearly from eps/eps_warmup
    attack_alpha: float | None = None  # None: eps/4 for PGD/TRADES, 1.25 eps for FGSM-RS
    trades_beta: float = 6.0
    # uniform: every subnet equally trained (BENCHMARKS.md); sandwich: + largest/smallest
    sampling: str = "uniform"
    sandwich_random: int = 1  # random paths per step besides largest and smallest
    # validate largest/smallest every N epochs and at the end (single-step attacks: every epoch)
    eval_every: int = 5
    eval_size: int = 200  # validation images for the per-epoch check
    eval_steps: int = 20  # PGD-20 in the per-epoch check
    # points of PGD accuracy lost vs the best epoch that count as catastrophic overfitting
    co_drop: float = 20.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bfloat16/float16 autocast on CUDA
    val_size: int | None = None  # None: the data set's default validation size
    limit_train: int | None = None  # use only the first N training images (smoke tests, quick looks)
    # a seeded, class-balanced subset of N training images (CPU budgets: 28x28 sets on 2 cores); None: all
    train_subset: int | None = None

    def validate(self) -> None:
        if is_user_spec(self.dataset):  # a user's images: stored with an absolute path, options in order
            self.dataset = dataset_spec(self.dataset)
        if self.epochs < 0:
            raise NasctlError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise NasctlError(f"--batch-size must be > 0, got {self.batch_size}")
        if self.attack not in TRAIN_ATTACKS:
            raise NasctlError(f"unknown training attack {self.attack!r}: "
                              f"choose one of {', '.join(TRAIN_ATTACKS)}")
        if self.sampling not in ("uniform", "sandwich"):
            raise NasctlError(f"unknown --sampling {self.sampling!r}: choose uniform or sandwich")
        if self.eps is not None and not 0 <= self.eps <= 1:
            raise NasctlError(f"--eps must be in [0, 1] (pixels are in [0, 1]), got {self.eps}")
        check_width(self.width_mult)
        if self.train_subset is not None and not self.train_subset > 0:
            raise NasctlError(f"--train-subset must be a positive number of training images, got "
                              f"{self.train_subset}")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise NasctlError(f"--train-subset {self.train_subset} is smaller than one batch "
                              f"({self.batch_size})")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise NasctlError(f"--limit-train {self.limit_train} is smaller than one batch "
                              f"({self.batch_size})")
        # the supernet these settings build must fit in memory: refused here, before anything is allocated (an
        # allocator error about a 147 GB tensor is no message); an unregistered data set is left to the loader
        try:
            info = dataset_info(self.dataset)
        except NasctlError:
            return
        check_supernet_fits(resolve_space(self), info.in_channels, info.num_classes)


def resolve_space(cfg: TrainConfig, info: DatasetInfo | None = None) -> SearchSpace:
    """The space a training config names (``auto``: built from the data set's resolution). ``info``: the
    data in hand (splits a caller passed in), whose name need not be registered; such data without a
    ``space`` gets ``auto``."""
    if cfg.space:
        name = cfg.space
    elif info is not None and info.name not in dataset_names() and not is_user_spec(info.name):
        name = AUTO
    else:
        name = default_space(cfg.dataset)
    try:
        auto = is_auto(name)
        resolution = (info or dataset_info(cfg.dataset)).resolution if auto else 0
        return space_for(name, resolution, cfg.width_mult)
    except ValueError as e:
        raise NasctlError(str(e)) from e


class _Paths(nn.Module):
    """Runs several (genome, images) pairs through the supernet in one forward call (one DDP step)."""

    def __init__(self, supernet: Supernet):
        super().__init__()
        self.supernet = supernet

    def forward(self, genomes: list[Genome], images: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for g, x in zip(genomes, images):
            self.supernet.set_active(g)
            outs.append(self.supernet(x))
        return outs


@dataclass
class EpochMetrics:
    epoch: int
    lr: float
    loss: float
    train_clean_acc: float  # percent, over the trained paths on clean inputs
    train_adv_acc: float  # percent, over the trained paths on their adversarial inputs
    # 'largest'/'smallest' -> clean_acc, adv_acc (PGD-eval_steps); {} if skipped
    val: dict[str, dict[str, float]]
    seconds: float
    images_per_s: float
    catastrophic_overfitting: bool = False


class TrainCallbacks:
    """Hooks for progress display; the CLI draws bars, library code only calls these."""

    def on_epoch_start(self, epoch: int, epochs: int, n_batches: int) -> None: ...
    def on_batch(self, loss: float, clean_acc: float, adv_acc: float) -> None: ...
    def on_epoch_end(self, m: EpochMetrics) -> None: ...


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Trainer:
    """Owns one training run: data, supernet, optimiser, generators, run folder and checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: DataSplits | None = None,
                 callbacks: TrainCallbacks | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.cb = callbacks or TrainCallbacks()
        self.device = resolve_device(cfg.device)
        self.rank, self.world = _dist_info()
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self.data = data or load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, val_size=cfg.val_size)
        self.data = subset_train(self.data, cfg.train_subset, cfg.seed)
        if cfg.limit_train:
            self.data = DataSplits(self.data.info, self.data.train.subset(cfg.limit_train), self.data.val,
                                   self.data.test)
        self.space = resolve_space(cfg, self.data.info)
        self.eps = cfg.eps if cfg.eps is not None else self.data.info.default_eps
        # weight init from the seed, without touching the caller's global RNG state (fork_rng restores it);
        # all later randomness uses the generators below
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.supernet = build_supernet(self.space, self.data.info.to_dict()).to(self.device)
        self.paths: nn.Module = _Paths(self.supernet)
        if self.world > 1:
            self.paths = nn.parallel.DistributedDataParallel(self.paths, find_unused_parameters=True)
        self.opt, self.sched = sgd_cosine(self.supernet.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay,
                                          cfg.epochs)
        self.rng = np.random.default_rng(cfg.seed)  # path sampling: identical on every rank
        self.data_gen = torch.Generator().manual_seed(cfg.seed)  # batch order: identical on every rank
        self.attack_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1000 * (self.rank + 1))
        self.train_attack = self._make_train_attack(self.eps)
        self.eval_attack = PGD(eps=self.eps, steps=cfg.eval_steps, alpha=self.eps / 4)
        self.epoch = 0
        self.best_adv = -1.0
        self.best_state: dict[str, Any] | None = None
        self.stopped_early = False
        use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.use_amp = use_amp

    def _make_train_attack(self, eps: float) -> Attack:
        cfg = self.cfg
        return ATTACKS[cfg.attack].for_training(eps, cfg.attack_steps, cfg.attack_alpha, cfg.trades_beta)

    @property
    def single_step(self) -> bool:
        return ATTACKS[self.cfg.attack].single_step

    def epoch_eps(self, epoch: int) -> float:
        """Training eps of 0-based ``epoch``: a linear ramp over ``eps_warmup`` epochs, then eps."""
        w = self.cfg.eps_warmup
        return self.eps if w <= 0 else self.eps * min(1.0, (epoch + 1) / w)

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "space": self.space.to_dict(), "dataset": self.data.info.to_dict(),
            "config": asdict(self.cfg), "epoch": self.epoch, "eps": self.eps,
            "model": self.supernet.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": {"numpy": self.rng.bit_generator.state, "data": self.data_gen.get_state(),
                    "attack": self.attack_gen.get_state().cpu()},
            "best_adv": self.best_adv, "stopped_early": self.stopped_early,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        if ckpt["space"] != self.space.to_dict():
            raise NasctlError(f"checkpoint {ckpt['path']!r} is from space {ckpt['space'].get('name')!r} "
                              f"(width x{ckpt['space'].get('width_mult')}), not {self.space.describe()}: "
                              f"resume with the run's own settings")
        self.supernet.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.rng.bit_generator.state = ckpt["rng"]["numpy"]
        self.data_gen.set_state(ckpt["rng"]["data"])
        self.attack_gen.set_state(ckpt["rng"]["attack"])
        self.epoch = int(ckpt["epoch"])
        self.best_adv = float(ckpt.get("best_adv", -1.0))
        self.stopped_early = bool(ckpt.get("stopped_early", False))

    def save(self, name: str = "checkpoint.pt") -> Path:
        path = self.run_dir / name
        if self.rank == 0:
            atomic_torch_save(self.state(), path)
        return path

    # --- training ----------------------------------------------------------------------------
    def _sample_paths(self) -> list[Genome]:
        if self.cfg.sampling == "uniform":
            return [self.space.sample(self.rng)]
        return [self.space.largest(), self.space.smallest()] + [
            self.space.sample(self.rng) for _ in range(self.cfg.sandwich_random)]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def train_epoch(self) -> EpochMetrics:
        import time

        cfg = self.cfg
        self.supernet.train()
        self.train_attack = self._make_train_attack(self.epoch_eps(self.epoch))
        n_batches = len(self.data.train) // (cfg.batch_size * self.world)
        self.cb.on_epoch_start(self.epoch + 1, cfg.epochs, n_batches)
        tot_loss = tot_clean = tot_adv = tot_n = 0.0
        t0 = time.perf_counter()
        images = 0
        for x, y in self.data.train.batches(cfg.batch_size, shuffle=True, generator=self.data_gen,
                                           drop_last=True, rank=self.rank, world_size=self.world):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            genomes = self._sample_paths()
            advs = []
            for g in genomes:
                self.supernet.set_active(g)
                with self._autocast():
                    advs.append(self.train_attack(self.supernet, x, y, self.attack_gen))
            k = len(genomes)
            with self._autocast():
                if self.train_attack.needs_clean_logits:  # e.g. TRADES: clean logits with gradient
                    outs = self.paths(genomes + genomes, advs + [x] * k)
                    adv_logits, clean_logits = outs[:k], outs[k:]
                    losses = [self.train_attack.training_loss(a.float(), y, c.float())
                              for c, a in zip(clean_logits, adv_logits)]
                else:
                    adv_logits = self.paths(genomes, advs)
                    losses = [self.train_attack.training_loss(a.float(), y) for a in adv_logits]
                    with torch.no_grad():  # clean accuracy, for the progress display only
                        clean_logits = []
                        for g in genomes:
                            self.supernet.set_active(g)
                            clean_logits.append(self.supernet(x))
                loss = torch.stack(losses).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                c_acc = float(torch.stack([(c.argmax(1) == y).float().mean() for c in clean_logits]).mean())
                a_acc = float(torch.stack([(a.argmax(1) == y).float().mean() for a in adv_logits]).mean())
            tot_loss += loss.item() * len(y)
            tot_clean += c_acc * len(y)
            tot_adv += a_acc * len(y)
            tot_n += len(y)
            images += len(y) * len(genomes)
            self.cb.on_batch(loss.item(), 100 * c_acc, 100 * a_acc)
        seconds = time.perf_counter() - t0
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        self.epoch += 1
        sums = torch.tensor([tot_loss, tot_clean, tot_adv, tot_n, images], dtype=torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        tot_loss, tot_clean, tot_adv, tot_n, images = sums.tolist()
        every = 1 if self.single_step else max(cfg.eval_every, 1)
        val = self.check_paths() if self.epoch % every == 0 or self.epoch >= cfg.epochs else {}
        m = EpochMetrics(self.epoch, lr, tot_loss / max(tot_n, 1), 100 * tot_clean / max(tot_n, 1),
                         100 * tot_adv / max(tot_n, 1), val, seconds, images / max(seconds, 1e-9))
        self.guard_overfitting(m)
        return m

    def check_paths(self) -> dict[str, dict[str, float]]:
        """Clean and PGD accuracy of the largest and smallest subnets, BN recalibrated, eval mode."""
        out = {}
        val = self.data.val.subset(min(self.cfg.eval_size, len(self.data.val)))
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        for label, g in (("largest", self.space.largest()), ("smallest", self.space.smallest())):
            sub = self.supernet.extract(g)
            prepare_subnet(sub, self.data.train, BNCalibration(seed=self.cfg.seed), self.device)
            r = accuracy_under_attack(sub, val.batches(256), self.eval_attack, self.device, gen)
            out[label] = {"clean_acc": r.clean_acc, "adv_acc": r.adv_acc}
        self.supernet.train()
        return out

    def guard_overfitting(self, m: EpochMetrics) -> None:
        """Track the best validation PGD accuracy; under a single-step attack (FGSM), a drop of more than
        ``co_drop`` points is catastrophic overfitting: the best weights are restored and training stops,
        since the supernet would otherwise serve weights with no robustness left."""
        if not m.val:
            return
        adv = m.val["largest"]["adv_acc"]
        if adv > self.best_adv:
            self.best_adv = adv
            if self.single_step:
                self.best_state = copy.deepcopy(self.supernet.state_dict())
        elif self.single_step and adv < self.best_adv - self.cfg.co_drop:
            log.warning("catastrophic overfitting: PGD-%d accuracy fell from %.1f%% to %.1f%% at epoch %d; "
                        "restoring the best weights and stopping (use --attack n-fgsm or pgd)",
                        self.cfg.eval_steps, self.best_adv, adv, m.epoch)
            if self.best_state is not None:
                self.supernet.load_state_dict(self.best_state)
            m.catastrophic_overfitting = True
            self.stopped_early = True

    def fit(self) -> list[EpochMetrics]:
        history = []
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.rank == 0:
            _trim_metrics(metrics_path, self.epoch)
        while self.epoch < self.cfg.epochs and not self.stopped_early:
            m = self.train_epoch()
            history.append(m)
            if self.rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(_json_line(asdict(m)))
                    f.flush()
                    os.fsync(f.fileno())
            self.save("checkpoint.pt")
            self.cb.on_epoch_end(m)
        self.save("supernet.pt")
        return history



def _trim_metrics(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint being resumed from.

    An epoch's line is appended just before its checkpoint is written; when that write fails (a full
    disk, a kill in between) the resumed run trains the epoch again, and its line must not appear twice.
    """
    if not path.is_file():
        return
    import json

    lines = path.read_text().splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            return int(json.loads(line).get("epoch", 0)) <= epoch
        except (ValueError, AttributeError, TypeError):
            return line.endswith("\n")  # an unreadable complete line is kept; a half-written one dropped

    kept = [ln for ln in lines if keep(ln)]
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def _json_line(obj: Any) -> str:
    import json

    return json.dumps(obj,
                      default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)) + "\n"


def train_supernet(cfg: TrainConfig, callbacks: TrainCallbacks | None = None, run_dir: Path | None = None,
                   data: DataSplits | None = None) -> tuple[Path, list[EpochMetrics]]:
    """Train a supernet in a new run folder; returns (path of supernet.pt, per-epoch metrics)."""
    made_dir = run_dir is None
    # torch.distributed when torchrun launched us (a group the caller set up is used as it is)
    with process_group(str(resolve_device(cfg.device))):
        rank, _ = _dist_info()
        if run_dir is None:  # every rank writes into rank 0's folder
            run_dir = Path(broadcast(str(cfg.new_run_dir("train")) if rank == 0 else None))
        # rank 0 alone writes and locks the folder; bad input before any work leaves no empty folder
        with run_scope(run_dir, fresh=made_dir and rank == 0, lock=rank == 0):
            trainer = Trainer(cfg, run_dir, data=data, callbacks=callbacks)
            if trainer.rank == 0:
                write_run_config(run_dir, "train", cfg, {"space": trainer.space.to_dict(),
                                                         "dataset": trainer.data.info.to_dict(),
                                                         "eps": trainer.eps,
                                                         "world_size": trainer.world,
                                                         "device": str(trainer.device)})
            history = trainer.fit()
    return run_dir / "supernet.pt", history


def resume_training(run_dir: str | Path, callbacks: TrainCallbacks | None = None,
                    epochs: int | None = None) -> tuple[Path, list[EpochMetrics]]:
    """Continue a run from its last checkpoint with the run's own config (optionally more epochs).

    A run stopped before its first checkpoint (Ctrl-C during epoch 1) starts again at epoch 0 in the same
    folder with the config its ``config.json`` recorded: the resume command printed on Ctrl-C always works.
    """
    from nasctl.config import build_config

    run_dir = Path(run_dir)
    _check_train_folder(run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        return _restart(run_dir, callbacks, epochs)
    ckpt = read_checkpoint(run_dir / "checkpoint.pt")
    cfg = build_config(TrainConfig, dict(ckpt.get("config") or {}),
                       f"the config inside {str(run_dir / 'checkpoint.pt')!r}")
    if epochs is not None:
        cfg.epochs = epochs
        cfg.validate()
    with process_group(str(resolve_device(cfg.device))):
        with run_scope(run_dir, fresh=False, lock=_dist_info()[0] == 0):
            trainer = Trainer(cfg, run_dir, callbacks=callbacks)
            trainer.load_state(ckpt)
            trainer.sched.T_max = max(cfg.epochs, 1)
            log.info("resuming %s at epoch %d of %d", run_dir, trainer.epoch, cfg.epochs)
            history = trainer.fit()
    return run_dir / "supernet.pt", history


def _check_train_folder(run_dir: Path) -> None:
    """``--resume`` takes a training run's folder: anything else is one line saying what it got instead
    (and, for a search run that trains its own supernet, the command that continues both)."""
    from nasctl.runfolder import describe, folder_kind

    if not run_dir.is_dir():
        raise NasctlError(f"--resume {str(run_dir)!r} is not a run folder: give runs/train/<stamp>-<name>")
    kind = folder_kind(run_dir)
    if kind == "train" or (kind is None and (run_dir / "checkpoint.pt").is_file()):
        return
    if kind == "search" and (run_dir / "supernet").is_dir():
        fix = (f"it trains its own supernet in {str(run_dir / 'supernet')!r}: continue the search, and that "
               f"training, with 'nasctl search --resume {run_dir}'")
    elif kind == "search":
        fix = f"continue it with 'nasctl search --resume {run_dir}'"
    else:
        fix = "give the folder of a 'nasctl train' run (runs/train/<stamp>-<name>)"
    what = describe(run_dir) + (", not a 'nasctl train' run" if kind is not None else "")
    raise NasctlError(f"--resume {str(run_dir)!r} is {what}: {fix}")


def _restart(run_dir: Path, callbacks: TrainCallbacks | None,
             epochs: int | None) -> tuple[Path, list[EpochMetrics]]:
    """Train a run that has no checkpoint yet from epoch 0, in its own folder, with its recorded config."""
    from nasctl.config import build_config
    from nasctl.core import read_json_object

    path = run_dir / "config.json"
    doc = read_json_object(path, missing=f"--resume {str(run_dir)!r} has neither checkpoint.pt nor "
                           f"config.json: it was stopped before it started; run the same 'nasctl train' "
                           f"command again")
    cfg = build_config(TrainConfig, dict(doc.get("config") or {}), f"{str(path)!r}")
    if epochs is not None:
        cfg.epochs = epochs
        cfg.validate()
    log.info("%s has no checkpoint yet (stopped during its first epoch): training it from epoch 0", run_dir)
    return train_supernet(cfg, callbacks, run_dir=run_dir)
