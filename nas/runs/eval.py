"""Strong robustness evaluation of chosen subnets (``nasctl eval``).

The search ranks candidates with a cheap proxy; a claim about a chosen network needs the strong
protocol: eval mode, BN recalibrated, PGD with many steps and random restarts on the test split,
cross-checked with an independent implementation (the Adversarial Robustness Toolbox's PGD), a
query-only attack that masked gradients cannot fool (Square, from the attack registry) and, where the
optional ``pyautoattack`` package is installed, AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square).
The reported robust accuracy is the minimum over every attack that ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, run_scope

from ..attacks import PGD, accuracy_under_attack, make_attack
from ..attacks.autoattack import AA_LABELS, autoattack_accuracy, check_version
from ..data import TensorSplit
from ..search.evaluator import genome_seed

log = logging.getLogger(__name__)


@dataclass
class StrongEvalConfig:
    steps: int = 50
    restarts: int = 5
    n_images: int | None = None  # None: the whole test split
    art: bool = True  # cross-check with ART's PGD when installed
    # AutoAttack: standard (APGD-CE, APGD-T, FAB-T, Square), apgd (APGD-CE + APGD-T: a fraction of the
    # cost on a CPU, named as such in eval.json) or off
    autoattack: str = "standard"
    square_queries: int = 1000  # the query-only Square attack's budget per image; 0: skip it
    seed: int = 0
    eps: float | None = None  # L-inf radius on [0, 1] pixels; None: the supernet's training eps

    def validate(self) -> None:
        from nasctl.config import check_at_least_one, check_eps

        check_at_least_one(self, ("steps", "restarts", "n_images"))
        check_eps(self.eps)
        check_version(self.autoattack, "--autoattack")
        if isinstance(self.square_queries, bool) or not isinstance(self.square_queries, int) \
                or self.square_queries < 0:
            raise NasctlError(f"square_queries must be 0 (skip the Square attack) or a positive number of "
                              f"queries per image, got {self.square_queries!r}")


def _art_pgd_acc(model: torch.nn.Module, split: TensorSplit, eps: float, steps: int, shape, classes: int,
                 seed: int) -> float | None:
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(shape),
                            nb_classes=classes, clip_values=(0.0, 1.0))
    x, y = split.numpy_images(), split.labels.numpy()
    attack = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                      num_random_init=1, batch_size=256, verbose=False)
    state = np.random.get_state()
    np.random.seed(seed % (2**32))  # ART draws its random start from numpy's global generator
    try:
        x_adv = attack.generate(x=x)
    finally:
        np.random.set_state(state)
    with torch.no_grad():
        ok = model(torch.from_numpy(x)).argmax(1).numpy() == y
        ok &= model(torch.from_numpy(x_adv)).argmax(1).numpy() == y
    return 100.0 * float(ok.mean())


def _autoattack_acc(model: torch.nn.Module, split: TensorSplit, eps: float, seed: int,
                    version: str = "standard") -> float | None:
    """AutoAttack ``version`` from the ``pyautoattack`` package; None where it is not installed."""
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return None
    return autoattack_accuracy(model, split, eps, seed, version)["acc"]


def strong_evaluation(model: torch.nn.Module, genome: str, split: TensorSplit, eps: float,
                      info: dict[str, Any], cfg: StrongEvalConfig) -> dict[str, Any]:
    """Clean accuracy and robust accuracy under every available attack, in percent."""
    cfg.validate()
    model.eval()
    if cfg.n_images:
        split = split.subset(cfg.n_images)
    pgd = PGD(eps=eps, steps=cfg.steps, restarts=cfg.restarts)
    gen = torch.Generator().manual_seed(genome_seed(cfg.seed + 7, genome))
    r = accuracy_under_attack(model, split.batches(256), pgd, "cpu", gen)
    out: dict[str, Any] = {"genome": genome, "images": r.n, "eps": eps, "clean_acc": r.clean_acc,
                           "attacks": {f"pgd{cfg.steps}x{cfg.restarts}": {"acc": r.adv_acc, **pgd.to_dict()}}}
    if cfg.art:
        acc = _art_pgd_acc(model, split, eps, cfg.steps,
                           (info["in_channels"], info["resolution"], info["resolution"]),
                           info["num_classes"], cfg.seed)
        if acc is not None:
            out["attacks"]["art_pgd"] = {"acc": acc, "attack": "ART ProjectedGradientDescent",
                                         "steps": cfg.steps, "eps": eps, "restarts": 1}
    if cfg.square_queries:
        square = make_attack("square", eps=eps, queries=cfg.square_queries, seed=cfg.seed)
        sq = accuracy_under_attack(model, split.batches(1024), square, "cpu")
        out["attacks"]["square"] = {"acc": sq.adv_acc, **square.to_dict()}
    if cfg.autoattack != "off":
        acc = _autoattack_acc(model, split, eps, cfg.seed, cfg.autoattack)
        if acc is not None:
            out["attacks"]["autoattack"] = {"acc": acc, "attack": AA_LABELS[cfg.autoattack],
                                            "version": cfg.autoattack, "eps": eps}
        else:
            log.info("AutoAttack is not installed (pip install pyautoattack): reporting the attacks above")
    out["robust_acc"] = min(a["acc"] for a in out["attacks"].values())
    return out


# --- nasctl eval: which subnets, with which weights ------------------------------------------------
@dataclass
class EvalConfig(RunFolder):
    """``nasctl eval``: the subnets to evaluate and the strong protocol's settings."""

    run: str | None = None  # search run folder
    pick: str = "knee"  # knee | all | INDEX | GENOME of the run's front
    checkpoint: str | None = None  # a supernet (with arch) or a fine-tuned subnet.pt
    arch: list[str] | None = None  # genome strings, with a supernet checkpoint
    steps: int = 50  # PGD-50
    restarts: int = 5  # x 5 random restarts
    square_queries: int = 1000  # query-only Square attack per image; 0: skip
    autoattack: str = "standard"  # standard | apgd | off (StrongEvalConfig.autoattack)
    eps: float | None = None  # None: the training eps
    n_images: int | None = None  # None: the whole test split
    data_dir: str | None = None
    seed: int = 0

    def validate(self) -> None:
        self.protocol().validate()
        if not self.run and not self.checkpoint:
            raise NasctlError("say which subnet: --run RUN [--pick knee|all|INDEX|GENOME], --checkpoint "
                              "subnet.pt, or --checkpoint SUPERNET --arch GENOME")

    def protocol(self) -> StrongEvalConfig:
        return StrongEvalConfig(steps=self.steps, restarts=self.restarts, n_images=self.n_images,
                                square_queries=self.square_queries, autoattack=self.autoattack,
                                seed=self.seed, eps=self.eps)


@dataclass
class _Target:
    genome: str
    model: torch.nn.Module  # ready: eval mode, its own (or recalibrated) BN statistics
    weights: str  # "fine-tuned" | "inherited"
    checkpoint: str
    eps: float
    dataset: dict[str, Any]
    train_config: dict[str, Any]


class _Data:
    """The test data of the checkpoints being evaluated, loaded once (their split comes from the
    training seed)."""

    def __init__(self, data_dir: str | None):
        self.data_dir, self.splits = data_dir, None

    def __call__(self, dataset: dict[str, Any], train_config: dict[str, Any]):
        from ..data import load_dataset

        if self.splits is None:
            self.splits = load_dataset(dataset["name"], self.data_dir, seed=int(train_config.get("seed", 0)),
                                       val_size=train_config.get("val_size"))
        return self.splits


def _targets(cfg: EvalConfig, data: _Data) -> list[_Target]:
    """Every subnet ``cfg`` names, with the weights a user would deploy: a front member's fine-tuned
    checkpoint when the search trained it, else its inherited weights (BN recalibrated)."""
    from ..search.evaluator import CandidateEvaluator
    from ..supernet.checkpoint import FORMAT, load_supernet, read_checkpoint
    from ..supernet.subnet_ckpt import SUBNET_FORMAT, check_subnet_arch, subnet_from_checkpoint
    from .select import pick_from_run, read_front

    def fine_tuned(ckpt: dict[str, Any], arch: list[str] | None = None) -> _Target:
        sub = subnet_from_checkpoint(ckpt)
        check_subnet_arch(sub, arch or [])  # an --arch that is not its genome would be silently ignored
        return _Target(sub.genome, sub.model, "fine-tuned", sub.path, sub.eps, sub.dataset, sub.train_config)

    if cfg.checkpoint and not cfg.run:
        ckpt = read_checkpoint(cfg.checkpoint, formats=(FORMAT, SUBNET_FORMAT))
        if ckpt["format"] == SUBNET_FORMAT:
            return [fine_tuned(ckpt, cfg.arch)]
        if not cfg.arch:
            raise NasctlError(f"checkpoint {cfg.checkpoint!r} is a supernet: say which subnet with "
                              f"--arch GENOME")
        wanted: list[tuple[str, str | None]] = [(a, None) for a in cfg.arch]
        supernet_path = cfg.checkpoint
    else:
        run_dir, doc = read_front(cfg.run)
        picks = ([pick_from_run(run_dir, i) for i in range(len(doc["front"]))] if cfg.pick == "all"
                 else [pick_from_run(run_dir, cfg.pick)])
        wanted = ([(a, None) for a in cfg.arch] if cfg.arch
                  else [(p.genome, p.finetuned_checkpoint) for p in picks])
        supernet_path = cfg.checkpoint or picks[0].checkpoint
        data.data_dir = data.data_dir or doc.get("data_dir")
    loaded = load_supernet(supernet_path)
    out, evaluator = [], None
    for arch, finetuned in wanted:
        genome = loaded.space.parse(arch)
        if finetuned:
            out.append(fine_tuned(read_checkpoint(finetuned, formats=(SUBNET_FORMAT,))))
            continue
        if evaluator is None:
            evaluator = CandidateEvaluator(loaded.supernet, data(loaded.dataset, loaded.config), loaded.eps,
                                           seed=cfg.seed)
        out.append(_Target(genome.encode(), evaluator.subnet(genome), "inherited", loaded.path, loaded.eps,
                           loaded.dataset, loaded.config))
    return out


def evaluate_subnets(cfg: EvalConfig, on_result=None) -> Path:
    """``nasctl eval``: the strong protocol on each chosen subnet, into ``runs/eval/<stamp>/eval.json``.

    ``on_result(result)`` is called after each subnet (the CLI prints a line). Returns the JSON's path.
    """
    from nasctl.core import atomic_write_json
    from nasctl.runfolder import write_run_config

    cfg.validate()
    data = _Data(cfg.data_dir)
    targets = _targets(cfg, data)
    test = data(targets[0].dataset, targets[0].train_config).test
    out_dir = cfg.new_run_dir("eval")
    chosen = [{"genome": t.genome, "weights": t.weights, "checkpoint": t.checkpoint} for t in targets]
    write_run_config(out_dir, "eval", cfg, {"subnets": chosen})
    results: list[dict[str, Any]] = []

    def write(status: str) -> None:  # after every subnet: an interrupted run keeps what it finished
        atomic_write_json(out_dir / "eval.json", {"status": status, "evaluated": len(results),
                                                  "chosen": len(targets), "results": results})

    write("running")
    with run_scope(out_dir, fresh=False, lock=False, on_interrupt=lambda: write("interrupted")):
        for t in targets:
            eps = cfg.eps if cfg.eps is not None else t.eps
            r = strong_evaluation(t.model, t.genome, test, eps, t.dataset, cfg.protocol())
            r.update(weights=t.weights, checkpoint=t.checkpoint)
            results.append(r)
            write("running" if len(results) < len(targets) else "complete")
            if on_result is not None:
                on_result(r)
    return out_dir / "eval.json"
