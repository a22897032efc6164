"""Benchmark: hand-designed tiny CNNs trained with the project's recipe, beside a search's front.

    python bench/bench_baselines.py --out bench/results/baselines.json
    python bench/bench_baselines.py --run runs/search/<stamp> --out bench/results/baselines.json
    python bench/bench_baselines.py --dataset fashion-mnist --run runs/search/<stamp> \
        --out bench/results/baselines-fashion-mnist.json

Fashion-MNIST (issue 13): five plain conv stacks of the built-in ``mnist`` space (strided early: the
stem halves 28x28, and every net halves again twice; three widths, 8-16-32 to 16-32-48, and three
depths, 3, 4 and 6 convs) and a MobileNetV2-style tiny net (stride-2 stem, inverted residuals
with expansion 1 then 6, a 1x1 head conv), each built by the space code from a genome and trained
from scratch with the recipe and budget of the search's fine-tune stage (:class:`FinetuneConfig`'s
lr, batch and PGD-7; ``finetune_epochs`` epochs), on the same data: the run's (``--run``) or the
recipe file's (``--config``, default ``configs/fashion-mnist-cpu.yaml``) class-balanced
``train_subset`` of the same seeded split, scored with the final attack (``final_steps`` x
``final_restarts``) on the same test images (the first ``test_size`` of the official order where the
config sets it, else all 10,000). The budget a front member must meet is the baseline's own count.

The four plain CNNs of issue 9 (each conv followed by BatchNorm and ReLU, global average pool,
linear classifier) are written as genomes of the built-in digits space and built by the space's
own code (:func:`nasctl.nas.supernet.build_subnet`, fresh initialisation) -- which also proves that
they are points of the space. Each is trained with the project's trainer for static subnets
(:func:`nasctl.nas.training.subnet.adversarial_train`: PGD-7 with step eps/4, SGD lr 0.05 momentum 0.9
Nesterov, weight decay 5e-4, cosine, 40 epochs, batch 64) on ``load_dataset("digits", seed=0)``'s
1,200 training images, and evaluated on the 397 test images with the search's final attack
(:func:`nasctl.nas.search.evaluator.final_accuracy`: PGD-20, step eps/8, 3 restarts).

Their parameter counts are those of the issue minus the conv biases (1,442 vs 1,466 etc.): the
space's convs have none, since a bias in front of BatchNorm is redundant.

``--test-size N`` (fashion-mnist; 0: all 10,000) scores on another number of test images than the
recipe's ``test_size``: the baselines, and the run's fine-tuned members re-scored from their
checkpoints with the same attack and seed on the same images (members without a fine-tuned
checkpoint drop out of the comparison). 2,000 images leave +-0.8 points of noise; 10,000, +-0.4.

With ``--run RUN`` each baseline is printed beside the front member of that run's ``pareto.json``
nearest in size (log scale), and beside the best member with at most its parameters (the issue's
"4 / 4" rule: at least the baseline's clean and PGD accuracy with at most its parameters); front
numbers are the fine-tuned ones (``finetuned_*``) where present, else the inherited ones
(``final_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nasctl.nas.data import DataSplits, dataset_spec, first_test_images, load_dataset, subset_train
from nasctl.nas.data.userdata import is_user_spec
from nasctl.nas.search import SearchConfig
from nasctl.nas.search.evaluator import final_accuracy
from nasctl.nas.space import SearchSpace, load_space
from nasctl.nas.supernet import build_subnet
from nasctl.nas.training.subnet import (
    EpochSelection,
    FinetuneConfig,
    SubnetTrainConfig,
    adversarial_train,
    parse_tradeoffs,
    tradeoff_recipe,
)
from nasctl.nas.training.supernet import resolve_space
from nasctl.threads import usable_cores
from nasctl.workers import WorkerPool, resolve_workers, worker_state

# label -> (parameters in the issue's table, with conv biases; genome in the built-in digits space)
BASELINES: dict[str, tuple[int, str]] = {
    "conv3x3(8) -> conv3x3/2(16)": (1_466, "stem_c8-skip-skip-conv_k3_c16-skip-skip"),
    "conv3x3(16) -> conv3x3/2(32)": (5_226, "stem_c16-skip-skip-conv_k3_c32-skip-skip"),
    "conv3x3(32) -> conv3x3/2(64)": (19_658, "stem_c32-skip-skip-conv_k3_c64-skip-skip"),
    "conv3x3(16) -> conv3x3/2(32) -> conv3x3(32)": (14_538,
                                                    "stem_c16-skip-skip-conv_k3_c32-conv_k3_c32-skip"),
}
# the issue's recipe: lr 0.05 (the trainer's default is 0.1), 40 epochs, the rest the trainer's defaults
RECIPE = SubnetTrainConfig(epochs=40, lr=0.05, eps=0.1)

# MobileNetV2 shrunk to 28x28 and ~24 K params: conv3x3/2(16), then inverted residuals (expansion 1 to 8
# channels; expansion 6 to 16 and 24 channels, each stage opening with stride 2), a 1x1 head conv to 96,
# global pool, linear. A one-genome space, so the space's own blocks and builder make it.
MOBILENETV2_TINY = SearchSpace.from_dict({
    "name": "mobilenetv2-tiny", "stem_channels": 16, "stem_stride": 2,
    "stages": [{"layers": 1, "stride": 1, "widths": [8]}, {"layers": 2, "stride": 2, "widths": [16]},
               {"layers": 2, "stride": 2, "widths": [24]}],
    "blocks": ["ir_k3_e1", "ir_k3_e6"], "head_channels": 96})

# Fashion-MNIST (issue 13): label -> (space, genome). Plain conv stacks of the 'mnist' space: the stem is
# conv3x3/2 (28 -> 14), then two more stride-2 convs (7x7, 4x4); 'conv' layers at stride 1 with the
# width of their input carry the block's identity shortcut, as in the space.
FASHION_BASELINES: dict[str, tuple[str | SearchSpace, str]] = {
    "conv/2(8) -> conv/2(16) -> conv/2(32)": (
        "mnist", "stem_c8-skip-skip-conv_k3_c16-skip-conv_k3_c32-skip"),
    "conv/2(16) -> conv(16) -> conv/2(24) -> conv/2(32)": (
        "mnist", "stem_c16-conv_k3_c16-skip-conv_k3_c24-skip-conv_k3_c32-skip"),
    "conv/2(8) -> conv(8) -> conv/2(16) -> conv(16) -> conv/2(32) -> conv(32)": (
        "mnist", "stem_c8-conv_k3_c8-skip-conv_k3_c16-conv_k3_c16-conv_k3_c32-conv_k3_c32"),
    "conv/2(16) -> conv/2(32) -> conv/2(48)": (
        "mnist", "stem_c16-skip-skip-conv_k3_c32-skip-conv_k3_c48-skip"),
    "conv/2(16) -> conv(16) -> conv/2(32) -> conv(32) -> conv/2(48) -> conv(48)": (
        "mnist", "stem_c16-conv_k3_c16-skip-conv_k3_c32-conv_k3_c32-conv_k3_c48-conv_k3_c48"),
    "MobileNetV2-tiny: conv/2(16) -> IR e1(8) -> IR e6(16)/2 x2 -> IR e6(24)/2 x2 -> 1x1(96)": (
        MOBILENETV2_TINY, "ir_k3_e1_c8-ir_k3_e6_c16-ir_k3_e6_c16-ir_k3_e6_c24-ir_k3_e6_c24"),
}
DEFAULT_CONFIG = {"fashion-mnist": "configs/fashion-mnist-cpu.yaml"}


def build(genome: str, data: DataSplits, seed: int = 0,
          space: str | SearchSpace = "digits") -> torch.nn.Module:
    """A baseline as a freshly initialised subnet of ``space`` (default: the built-in digits space)."""
    info = data.info
    space = load_space(space) if isinstance(space, str) else space
    return build_subnet(space, genome, info.in_channels, info.num_classes, info.mean, info.std, seed=seed)


def train_and_evaluate(genome: str, data: DataSplits, cfg: SubnetTrainConfig,
                       space: str | SearchSpace = "digits", steps: int = 20,
                       restarts: int = 3, select: EpochSelection | None = None) -> dict[str, Any]:
    """Train a baseline with the fine-tune stage's recipe, its epoch selection included (``select``: the
    same best-on-validation rule the front members get, so neither side has a selection the other lacks)."""
    model = build(genome, data, cfg.seed, space)
    stats = adversarial_train(model, data, cfg, select=select)
    final = final_accuracy(model, genome, data.test, cfg.eps, cfg.seed + 1, steps, restarts)  # the search's
    return {"genome": genome, "params": sum(p.numel() for p in model.parameters()),
            "clean_acc": final["clean_acc"], "adv_acc": final["adv_acc"],
            "attack": final["attack"], "test_images": final["images"],
            "train_seconds": stats["seconds"],
            **({"chosen_epoch": stats["selection"]["chosen_epoch"],
                "epochs_run": stats["selection"]["epochs_run"]} if "selection" in stats else {})}


# --- the independent plain loop (issue 22.5) ---------------------------------------------------------------
# Written here from torch alone -- nn.Sequential, DataLoader, torch.optim -- so that it shares no code with
# nasctl's trainer or model builder: a baseline trained by someone who never saw nasctl. The recipe is the
# issue's: 40 epochs of PGD-7 (random start, step eps/4) crafted with the model in eval mode, SGD lr 0.05
# momentum 0.9 weight decay 5e-4, cosine, batch 64, the last epoch kept; convs with bias, torch's default
# initialisation, pixels in [0, 1] normalised by the data set's mean and std.
PLAIN_RECIPE = {"epochs": 40, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
                "attack": "pgd", "attack_steps": 7, "alpha": "eps/4", "craft_mode": "eval",
                "keep": "last epoch",
                "schedule": "cosine per epoch", "init": "torch default", "conv_bias": True}


def plain_cnn(genome: str, in_channels: int, num_classes: int, mean, std) -> torch.nn.Module:
    """A digits baseline genome (``stem_cA-...-conv_k3_cB-...``) as a plain ``nn.Sequential``: the stem a
    3x3 conv, every ``conv_k3`` a 3x3 conv (the first of the second stage with stride 2, as the space), each
    followed by BatchNorm and ReLU; global average pool; linear."""
    from torch import nn

    layers: list[nn.Module] = []
    c_in = in_channels
    for i, gene in enumerate(genome.split("-")):
        if gene == "skip":
            continue
        c_out = int(gene.rsplit("_c", 1)[1])
        stride = 2 if i == 3 else 1  # the digits space: stage 2 (genes 3-5) opens with stride 2
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in = c_out

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c_in, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features((x - self.mean) / self.std).mean((2, 3)))

    return Plain()


def plain_train(genome: str, data: DataSplits, eps: float, seed: int = 0, epochs: int = 40,
                steps: int = 20, restarts: int = 3) -> dict[str, Any]:
    """Train :func:`plain_cnn` with the plain loop and score it with the search's final attack."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    info = data.info
    model = plain_cnn(genome, info.in_channels, info.num_classes, info.mean, info.std)
    x_all, y_all = next(data.train.batches(len(data.train)))
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=PLAIN_RECIPE["batch_size"], shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=PLAIN_RECIPE["lr"], momentum=PLAIN_RECIPE["momentum"],
                          weight_decay=PLAIN_RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    alpha = eps / 4
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            model.eval()  # craft in eval mode
            x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(PLAIN_RECIPE["attack_steps"]):
                x_adv.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
                x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    final = final_accuracy(model, genome, data.test, eps, seed + 1, steps, restarts)  # the same final attack
    return {"genome": genome, "params": sum(p.numel() for p in model.parameters()),
            "clean_acc": final["clean_acc"], "adv_acc": final["adv_acc"], "attack": final["attack"],
            "test_images": final["images"], "train_seconds": seconds, "recipe": "plain"}


def fashion_setup(args: argparse.Namespace) -> tuple[DataSplits, SubnetTrainConfig, dict[str, Any]]:
    """The data, recipe and attack of the search's fine-tune stage, from the run's config.json (``--run``)
    or a recipe file (``--config``): same split seed, train subset, epochs, eps and test images."""
    from nasctl.config import merge_config
    from nasctl.nas.search import SearchConfig

    if args.run:
        from nasctl.nas.runs.search import config_from_run

        source = str(Path(args.run) / "config.json")
        scfg = config_from_run(json.loads(Path(source).read_text()), source)
    else:
        source = args.config or DEFAULT_CONFIG[args.dataset]
        scfg = merge_config(SearchConfig, source)
    if scfg.dataset != args.dataset:
        raise SystemExit(f"{source} is a {scfg.dataset} recipe, not {args.dataset}")
    tcfg = scfg.train_config()
    data = load_dataset(args.dataset, args.data_dir or scfg.data_dir, seed=tcfg.seed, val_size=tcfg.val_size)
    if is_user_spec(args.dataset):  # the plain stacks are points of the space the run searched (auto)
        args.space = resolve_space(tcfg)
    data = subset_train(data, tcfg.train_subset, tcfg.seed)  # exactly the supernet's training images
    test_size = getattr(scfg, "test_size", None)
    if args.test_size is not None:
        test_size = args.test_size or None  # 0: the whole test split
    data = first_test_images(data, test_size)
    f = FinetuneConfig()
    eps = scfg.eps if scfg.eps is not None else tcfg.eps if tcfg.eps is not None else data.info.default_eps
    recipe = SubnetTrainConfig(epochs=args.epochs or scfg.finetune_epochs, batch_size=f.batch_size, lr=f.lr,
                               attack_steps=f.attack_steps, eps=eps, seed=scfg.seed)
    meta = {"recipe_source": source, "train_subset": tcfg.train_subset, "split_seed": tcfg.seed,
            "final_steps": scfg.final_steps, "final_restarts": scfg.final_restarts,
            "select": asdict(scfg.finetune_config().selection())}
    return data, recipe, meta


def run_tradeoffs(args: argparse.Namespace) -> list[str]:
    """The trade-offs the run's fine-tune stage used (its config.json; robust for older runs and for
    ``--config`` recipes without one), in the run's order."""
    if not args.run:
        return ["robust"]
    doc = json.loads((Path(args.run) / "config.json").read_text())
    named = (doc.get("config") or {}).get("finetune_tradeoff") or "robust"
    return parse_tradeoffs(named, "finetune_tradeoff")


def front_numbers(entry: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(clean %, PGD %, which weights) of a pareto.json member: one per fine-tuned trade-off entry
    (``finetuned_tradeoffs``; older runs: ``finetuned_*``) where present, else the inherited weights'."""
    tradeoffs = entry.get("finetuned_tradeoffs") or {}
    if tradeoffs:
        return [(float(t["clean_acc"]), float(t["adv_acc"]), f"fine-tuned {name}")
                for name, t in tradeoffs.items()]
    if entry.get("finetuned_clean_acc") is not None and entry.get("finetuned_adv_acc") is not None:
        return [(float(entry["finetuned_clean_acc"]), float(entry["finetuned_adv_acc"]), "fine-tuned")]
    return [(float(entry["final_clean_acc"]), float(entry["final_adv_acc"]), "inherited")]


def compare(baseline: dict[str, Any], front: list[dict[str, Any]], slack: float = 0.0) -> dict[str, Any]:
    """The front member nearest in size, the best entry with at most the baseline's parameters, and the
    best entry that beats it: at most its parameters, at least its PGD accuracy and at least its clean
    accuracy minus ``slack`` points (the issue's "one test image": 100 / test images)."""
    def members(e: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"genome": e["genome"], "params": int(e["params"]), "clean_acc": clean, "adv_acc": adv,
                 "weights": weights} for clean, adv, weights in front_numbers(e)]

    near_e = min(front, key=lambda e: (abs(math.log(int(e["params"]) / baseline["params"])), e["params"]))
    near = max(members(near_e), key=lambda m: (m["adv_acc"], m["clean_acc"]))
    # issue 9 counts the digits baselines' parameters with conv biases, so the budget is that number;
    # elsewhere it is the baseline's own count
    budget = baseline.get("issue_params", baseline["params"])
    within = [m for e in front if int(e["params"]) <= budget for m in members(e)]
    beats = [m for m in within
             if m["clean_acc"] >= baseline["clean_acc"] - slack - 1e-9
             and m["adv_acc"] >= baseline["adv_acc"]]
    best = max(within, key=lambda m: (m["adv_acc"], m["clean_acc"]), default=None)
    top = max(beats, key=lambda m: (m["adv_acc"], m["clean_acc"]), default=None)
    return {"nearest": near, "best_within_params": best, "beaten_by": top, "clean_slack": slack}


def read_front(run: str | Path) -> list[dict[str, Any]]:
    doc = json.loads((Path(run) / "pareto.json").read_text())
    return list(doc["front"])


def rescore_front(run: str | Path, front: list[dict[str, Any]], data: DataSplits, seed: int, steps: int,
                  restarts: int) -> list[dict[str, Any]]:
    """The run's fine-tuned entries scored again, from their checkpoints, on ``data.test`` (as the fine-tune
    stage scored them: the final attack, seed + 1); the members without a fine-tuned checkpoint drop out."""
    from nasctl.nas.supernet.subnet_ckpt import load_subnet

    def rescore(ckpt: str, was: tuple[float, float]) -> dict[str, Any]:
        sub = load_subnet(Path(run) / ckpt)
        t0 = time.perf_counter()
        acc = final_accuracy(sub.model, sub.genome, data.test, sub.eps, seed + 1, steps, restarts)
        print(f"re-scored {ckpt} on {acc['images']} test images: clean {acc['clean_acc']:5.1f}  PGD "
              f"{acc['adv_acc']:5.1f} (was {was[0]:.1f} / {was[1]:.1f}; {time.perf_counter() - t0:.0f} s)",
              flush=True)
        return acc

    out = []
    for e in front:
        if not e.get("finetuned_checkpoint"):
            continue
        tradeoffs = e.get("finetuned_tradeoffs") or {
            "robust": {"clean_acc": e["finetuned_clean_acc"], "adv_acc": e["finetuned_adv_acc"],
                       "checkpoint": e["finetuned_checkpoint"]}}
        again = {}
        for name, t in tradeoffs.items():
            acc = rescore(t["checkpoint"], (t["clean_acc"], t["adv_acc"]))
            again[name] = {**t, "clean_acc": acc["clean_acc"], "adv_acc": acc["adv_acc"],
                           "rescored_images": acc["images"], "run_clean_acc": t["clean_acc"],
                           "run_adv_acc": t["adv_acc"]}
        first = next(iter(again.values()))
        out.append({**e, "finetuned_clean_acc": first["clean_acc"], "finetuned_adv_acc": first["adv_acc"],
                    "finetuned_tradeoffs": again})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the baselines, with the nearest front member beside each when compared."""
    compared = any(r.get("comparison") for r in rows)
    attack = rows[0]["attack"] if rows else {"steps": 20, "restarts": 3}
    head = f"| baseline | recipe | params | clean % | PGD-{attack['steps']}x{attack['restarts']} % |"
    rule = "| --- | --- | ---: | ---: | ---: |"
    if compared:
        head += " nearest front member | params | clean % | PGD % | weights | best entry beating it |"
        rule += " --- | ---: | ---: | ---: | --- | --- |"
    lines = [head, rule]
    for r in rows:
        line = (f"| {r['label']} | {r.get('recipe', 'project')} | {r['params']:,} | {r['clean_acc']:.1f} | "
                f"{r['adv_acc']:.1f} |")
        if compared:
            n = r["comparison"]["nearest"]
            b = r["comparison"]["beaten_by"]
            won = (f"{b['params']:,} params, {b['clean_acc']:.1f} / {b['adv_acc']:.1f} ({b['weights']})"
                   if b else "none")
            line += (f" `{n['genome']}` | {n['params']:,} | {n['clean_acc']:.1f} | {n['adv_acc']:.1f} | "
                     f"{n['weights']} | {won} |")
        lines.append(line)
    if compared:
        won = sum(1 for r in rows if r["comparison"]["beaten_by"])
        slack = rows[0]["comparison"].get("clean_slack", 0.0)
        lines += ["", f"baselines beaten by a fine-tuned entry with at most their parameters (as the issue "
                      f"counts them), at least their PGD accuracy and at least their clean accuracy minus "
                      f"{slack:.2f} points (one test image): {won} / {len(rows)}"]
    return "\n".join(lines)


def _train(job: tuple, data: DataSplits, cfg: SubnetTrainConfig, meta: dict[str, Any]) -> tuple[dict, float]:
    """Train and score one baseline (``recipe, label, space, genome, issue_params``); (result, seconds)."""
    recipe, _, space, genome, _ = job
    t0 = time.perf_counter()
    if recipe == "plain":
        trained = plain_train(genome, data, cfg.eps, cfg.seed, cfg.epochs, meta["final_steps"],
                              meta["final_restarts"])
    else:
        recipe_cfg = cfg if recipe == "project" else tradeoff_recipe(cfg, recipe)
        trained = train_and_evaluate(genome, data, recipe_cfg, space, meta["final_steps"],
                                     meta["final_restarts"], EpochSelection(**meta["select"]))
    return trained, time.perf_counter() - t0


def _init_worker(device: str, data: DataSplits, cfg: SubnetTrainConfig, meta: dict[str, Any]) -> tuple:
    return data, cfg, meta


def _train_job(job: tuple) -> tuple[dict, float]:
    return _train(job, *worker_state())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="digits",
                    help="digits, fashion-mnist, or a user's images (folder:DIR, npz:FILE; with --run): the "
                    "Fashion-MNIST stacks built in the run's own space (auto: the same network at 28x28 "
                    "and 32x32)")
    ap.add_argument("--run", default=None, help="search run folder whose pareto.json to compare with (and, "
                    "for fashion-mnist, whose config.json gives the recipe)")
    ap.add_argument("--config", default=None, help="fashion-mnist without --run: the search recipe to match "
                    "(default configs/fashion-mnist-cpu.yaml)")
    ap.add_argument("--data-dir", default=None, help="fashion-mnist files (default: Debian's package)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: digits 40, fashion-mnist the recipe's finetune_epochs)")
    ap.add_argument("--seed", type=int, default=None, help="digits only (fashion-mnist: the recipe's seed)")
    ap.add_argument("--limit-train", type=int, default=None, help="first N training images (smoke tests)")
    ap.add_argument("--limit-test", type=int, default=None, help="first N test images only (smoke tests)")
    ap.add_argument("--test-size", type=int, default=None,
                    help="fashion-mnist: score on the first N test images (0: all) instead of the recipe's "
                    "test_size; the run's fine-tuned members are re-scored on the same images")
    ap.add_argument("--recipe", choices=("project", "accurate", "plain", "both", "tradeoffs"), default=None,
                    help="train the baselines with the project's trainer (its robust trade-off), the same "
                    "trainer at the accurate trade-off, the independent plain loop (digits only), both "
                    "(project and plain), or tradeoffs: one baseline per trade-off the run fine-tuned "
                    "with (default: both on digits, tradeoffs elsewhere)")
    ap.add_argument("--only", nargs="*", default=None, help="labels of the baselines to train (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny nets run as fast on one)")
    # auto when run as a script; 1 when imported (a test's main(argv)): spawned workers import the
    # functions by module, and an imported script's module is not importable by name
    ap.add_argument("--workers", default="auto" if __name__ == "__main__" else "1",
                    help="worker processes training baselines side by side, each with --threads threads: "
                    "auto (one per core; the default when run as a script) or N; results are the same")
    ap.add_argument("--out", default=None,
                    help="default bench/results/baselines.json (digits), baselines-fashion-mnist.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if is_user_spec(args.dataset):
        args.dataset = dataset_spec(args.dataset)
        if not (args.run or args.config):
            raise SystemExit("--dataset folder:/npz: needs --run (the search whose recipe to match) "
                             "or --config")
    elif args.dataset not in ("digits", "fashion-mnist"):
        raise SystemExit(f"--dataset {args.dataset!r}: give digits, fashion-mnist, folder:DIR or npz:FILE")
    args.space = None
    if args.dataset == "digits":
        data = load_dataset("digits", seed=0)
        cfg = SubnetTrainConfig(**{**asdict(RECIPE), "epochs": args.epochs or RECIPE.epochs,
                                   "seed": args.seed or 0})
        meta: dict[str, Any] = {"split_seed": 0, "final_steps": 20, "final_restarts": 3,
                                "select": asdict(SearchConfig().finetune_config().selection())}
        baselines = {label: ("digits", genome, issue_params)
                     for label, (issue_params, genome) in BASELINES.items()}
    else:
        data, cfg, meta = fashion_setup(args)
        meta["tradeoffs"] = run_tradeoffs(args)
        baselines = {label: (space if isinstance(space, SearchSpace) or args.space is None else args.space,
                             genome, None) for label, (space, genome) in FASHION_BASELINES.items()}
    if args.limit_train or args.limit_test:
        data = DataSplits(data.info, data.train.subset(args.limit_train or len(data.train)), data.val,
                          data.test.subset(args.limit_test or len(data.test)))
    front = read_front(args.run) if args.run else None
    if front and args.test_size is not None:
        front = rescore_front(args.run, front, data, cfg.seed, meta["final_steps"], meta["final_restarts"])
    # a trade-off the front was fine-tuned with is given to the baselines too: same recipe on both sides
    by_tradeoff = ["project" if t == "robust" else t for t in meta.get("tradeoffs", ["robust"])]
    recipes = {"both": ["project", "plain"], "tradeoffs": by_tradeoff,
               None: ["project", "plain"] if args.dataset == "digits" else by_tradeoff}.get(
                   args.recipe, [args.recipe])
    if "plain" in recipes and args.dataset != "digits":
        raise SystemExit("--recipe plain: the plain loop's networks are written for the digits baselines; "
                         "give --recipe project for other data sets")
    slack = 100.0 / len(data.test)  # one test image
    width = max(46, *(len(label) for label in baselines))
    jobs = [(recipe, label, space, genome, issue_params) for recipe in recipes
            for label, (space, genome, issue_params) in baselines.items()
            if not args.only or label in args.only]
    context = (data, cfg, meta)
    workers = resolve_workers(args.workers, "cpu", usable_cores())
    rows = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:  # one-thread worker processes, each training whole baselines
            pool = stack.enter_context(WorkerPool(min(workers, len(jobs)), _init_worker, context,
                                                  threads=args.threads))
            trained_all = pool.map(_train_job, jobs, lambda job: f"baseline {job[1]} ({job[0]})")
        else:
            trained_all = (_train(job, *context) for job in jobs)
        for (recipe, label, _, _, issue_params), (trained, seconds) in zip(jobs, trained_all):
            r: dict[str, Any] = {"label": label, "recipe": recipe,
                                 **({"issue_params": issue_params} if issue_params else {}), **trained}
            if front:
                r["comparison"] = compare(r, front, slack)
            r["seconds"] = seconds
            rows.append(r)
            print(f"{label:<{width}} {recipe:<8} {r['params']:>7,} params  clean {r['clean_acc']:5.1f}  "
                  f"PGD-{meta['final_steps']}x{meta['final_restarts']} {r['adv_acc']:5.1f}  "
                  f"({r['train_seconds']:.0f} s)", flush=True)
    print()
    print(table(rows))
    doc = {"recipe": asdict(cfg), "plain_recipe": PLAIN_RECIPE if "plain" in recipes else None,
           "recipes": recipes, "dataset": args.dataset, **meta, "train_images": len(data.train),
           "test_images": len(data.test), "run": str(args.run) if args.run else None, "baselines": rows}
    out = Path(args.out or ("bench/results/baselines.json" if args.dataset == "digits"
                            else "bench/results/baselines-own-images.json" if is_user_spec(args.dataset)
                            else f"bench/results/baselines-{args.dataset}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
