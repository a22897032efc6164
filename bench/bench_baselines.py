"""Benchmark: hand-designed tiny CNNs trained with the project's recipe, beside a search's front.

    python bench/bench_baselines.py --out bench/results/baselines.json
    python bench/bench_baselines.py --run runs/search/<stamp> --out bench/results/baselines.json

The four plain CNNs of issue 9 (each conv followed by BatchNorm and ReLU, global average pool,
linear classifier) are written as genomes of the built-in digits space and built by the space's
own code (:func:`nasctl.nas.supernet.build_subnet`, fresh initialisation) -- which also proves that
they are points of the space. Each is trained with the project's trainer for static subnets
(:func:`nasctl.nas.finetune.adversarial_train`: PGD-7 with step eps/4, SGD lr 0.05 momentum 0.9
Nesterov, weight decay 5e-4, cosine, 40 epochs, batch 64) on ``load_dataset("digits", seed=0)``'s
1,200 training images, and evaluated on the 397 test images with the search's final attack
(:func:`nasctl.nas.candidates.test_accuracy`: PGD-20, step eps/8, 3 restarts).

Their parameter counts are those of the issue minus the conv biases (1,442 vs 1,466 etc.): the
space's convs have none, since a bias in front of BatchNorm is redundant.

With ``--run RUN`` each baseline is printed beside the front member of that run's ``pareto.json``
nearest in size (log scale), and beside the best member with at most its parameters (the issue's
"4 / 4" rule: at least the baseline's clean and PGD accuracy with at most its parameters); front
numbers are the fine-tuned ones (``finetuned_*``) where present, else the inherited ones
(``final_*``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from nasctl.nas.candidates import test_accuracy
from nasctl.nas.data import DataSplits, load_dataset
from nasctl.nas.finetune import SubnetTrainConfig, adversarial_train
from nasctl.nas.space import load_space
from nasctl.nas.supernet import build_subnet

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


def build(genome: str, data: DataSplits, seed: int = 0) -> torch.nn.Module:
    """A baseline as a freshly initialised subnet of the built-in digits space."""
    info = data.info
    return build_subnet(load_space("digits"), genome, info.in_channels, info.num_classes, info.mean, info.std,
                        seed=seed)


def train_and_evaluate(genome: str, data: DataSplits, cfg: SubnetTrainConfig) -> dict[str, Any]:
    model = build(genome, data, cfg.seed)
    stats = adversarial_train(model, data, cfg)
    final = test_accuracy(model, genome, data.test, cfg.eps, cfg.seed + 1)  # seeded as the search's
    return {"genome": genome, "params": sum(p.numel() for p in model.parameters()),
            "clean_acc": final["clean_acc"], "adv_acc": final["adv_acc"],
            "attack": final["attack"], "test_images": final["images"],
            "train_seconds": stats["seconds"]}


def front_numbers(entry: dict[str, Any]) -> tuple[float, float, str]:
    """(clean %, PGD %, which weights) of a pareto.json member: fine-tuned where present."""
    if entry.get("finetuned_clean_acc") is not None and entry.get("finetuned_adv_acc") is not None:
        return float(entry["finetuned_clean_acc"]), float(entry["finetuned_adv_acc"]), "fine-tuned"
    return float(entry["final_clean_acc"]), float(entry["final_adv_acc"]), "inherited"


def compare(baseline: dict[str, Any], front: list[dict[str, Any]]) -> dict[str, Any]:
    """The front member nearest in size, and the best one with at most the baseline's parameters."""
    def member(e: dict[str, Any]) -> dict[str, Any]:
        clean, adv, weights = front_numbers(e)
        return {"genome": e["genome"], "params": int(e["params"]), "clean_acc": clean, "adv_acc": adv,
                "weights": weights}

    near = min(front, key=lambda e: (abs(math.log(int(e["params"]) / baseline["params"])), e["params"]))
    # the issue counts parameters as written there (with conv biases), so the budget is that number
    budget = baseline["issue_params"]
    within = [member(e) for e in front if int(e["params"]) <= budget]
    beats = [m for m in within
             if m["clean_acc"] >= baseline["clean_acc"] and m["adv_acc"] >= baseline["adv_acc"]]
    best = max(within, key=lambda m: (m["adv_acc"], m["clean_acc"]), default=None)
    top = max(beats, key=lambda m: (m["adv_acc"], m["clean_acc"]), default=None)
    return {"nearest": member(near), "best_within_params": best, "beaten_by": top}


def read_front(run: str | Path) -> list[dict[str, Any]]:
    doc = json.loads((Path(run) / "pareto.json").read_text())
    return list(doc["front"])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the baselines, with the nearest front member beside each when compared."""
    compared = any(r.get("comparison") for r in rows)
    head = "| baseline | params | clean % | PGD-20x3 % |"
    rule = "| --- | ---: | ---: | ---: |"
    if compared:
        head += " nearest front member | params | clean % | PGD % | weights | best member beating it |"
        rule += " --- | ---: | ---: | ---: | --- | --- |"
    lines = [head, rule]
    for r in rows:
        line = f"| {r['label']} | {r['params']:,} | {r['clean_acc']:.1f} | {r['adv_acc']:.1f} |"
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
        lines += ["", f"front members with at most a baseline's parameters (as the issue counts them) and at "
                      f"least its clean and PGD accuracy: {won} / {len(rows)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="search run folder whose pareto.json to compare with")
    ap.add_argument("--epochs", type=int, default=RECIPE.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-train", type=int, default=None, help="first N training images (smoke tests)")
    ap.add_argument("--limit-test", type=int, default=None, help="first N test images only (smoke tests)")
    ap.add_argument("--only", nargs="*", default=None, help="labels of the baselines to train (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny nets run as fast on one)")
    ap.add_argument("--out", default="bench/results/baselines.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=0)
    if args.limit_train or args.limit_test:
        data = DataSplits(data.info, data.train.subset(args.limit_train or len(data.train)), data.val,
                          data.test.subset(args.limit_test or len(data.test)))
    cfg = SubnetTrainConfig(**{**asdict(RECIPE), "epochs": args.epochs, "seed": args.seed})
    front = read_front(args.run) if args.run else None
    rows = []
    for label, (issue_params, genome) in BASELINES.items():
        if args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        r = {"label": label, "issue_params": issue_params, **train_and_evaluate(genome, data, cfg)}
        if front:
            r["comparison"] = compare(r, front)
        r["seconds"] = time.perf_counter() - t0
        rows.append(r)
        print(f"{label:<46} {r['params']:>7,} params  clean {r['clean_acc']:5.1f}  "
              f"PGD-20x3 {r['adv_acc']:5.1f}  ({r['train_seconds']:.0f} s)", flush=True)
    print()
    print(table(rows))
    doc = {"recipe": asdict(cfg), "dataset": "digits", "split_seed": 0, "train_images": len(data.train),
           "test_images": len(data.test), "run": str(args.run) if args.run else None, "baselines": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
