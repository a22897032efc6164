"""Benchmark: does a weight-sharing supernet train when its space offers several block families?

    python bench/bench_block_mixing.py --epochs 15 --seeds 0 1 --out bench/results/block_mixing.json

Clean training (no attack, to isolate the effect), uniform path sampling (a new random subnet
every batch: stem, blocks, widths and head of the built-in digits layout), SGD lr 0.05: the mean
training accuracy of the sampled subnets in the last epoch, overall and per group of blocks, mean
over seeds. Each row changes only the blocks and how they may combine:

* ``per layer``: any block may follow any other (the space has no ``block_groups``);
* ``groups``: few-shot sub-supernets, every subnet takes all its blocks from one group (plus
  skip); block weights are shared where a weight family spans groups (a plain conv is the first
  filters of the fused block's expansion conv), and so are stem and head; groups of unrelated
  blocks get a stem and head each (:func:`nasctl.nas.supernet.sub_supernets`);
* ``one stem``: the same groups with one stem and head for all of them;
* ``stem per group``: the same groups with a stem and head each, also where they share blocks;
* ``separate dense weights``: ``conv_*`` and ``fir_*`` in separate weight families instead of
  nested (and so with a stem and head each).

This is the measurement behind the built-in digits space's ``block_groups``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nasctl.nas import supernet as supernet_module
from nasctl.nas.data import load_dataset
from nasctl.nas.space import SearchSpace, load_space
from nasctl.nas.space import blocks as block_registry
from nasctl.nas.supernet import Supernet

IR = ["ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6"]
CONV, FIR = ["conv_k3"], ["fir_k3_e2", "fir_k3_e4"]
# label -> (groups of blocks, how they combine)
SETS: dict[str, tuple[list[list[str]], str]] = {
    "ir only": ([IR], "groups"),
    "conv only": ([CONV], "groups"),
    "fir only": ([FIR], "groups"),
    "per layer: ir + dsc": ([IR[:2] + ["dsc_k3"]], "per layer"),
    "per layer: conv + fir": ([CONV + FIR], "per layer"),
    "per layer: ir + conv + fir": ([IR + CONV + FIR], "per layer"),
    "groups: conv | fir (the digits space)": ([CONV, FIR], "groups"),
    "groups: conv | fir, stem per group": ([CONV, FIR], "groups, stem per group"),
    "groups: conv | fir, separate dense weights": ([CONV, FIR], "separate dense weights"),
    "groups: conv | fir | ir": ([CONV, FIR, IR], "groups"),
    "groups: conv | fir | ir, one stem": ([CONV, FIR, IR], "groups, one stem"),
    "groups: conv | fir | ir, stem per group": ([CONV, FIR, IR], "groups, stem per group"),
}


@contextlib.contextmanager
def stem_per_group():
    """One stem and head per group, also for groups that share block weights."""
    saved = supernet_module.sub_supernets
    supernet_module.sub_supernets = lambda space: list(range(len(space.groups)))
    try:
        yield
    finally:
        supernet_module.sub_supernets = saved


@contextlib.contextmanager
def separate_dense_weights():
    """Give plain convs and fused blocks separate weight families (the alternative to nesting)."""
    cls = block_registry.DenseConv
    saved = cls.family_of
    cls.family_of = classmethod(lambda c, h: c.__name__ + ("_plain" if h["expand"] == 0 else "_fused"))
    try:
        yield
    finally:
        cls.family_of = saved


def make_space(groups: list[list[str]], mixed: bool) -> SearchSpace:
    blocks = [b for g in groups for b in g] + ["skip"]
    d = {**load_space("digits").to_dict(), "blocks": blocks}
    d.pop("block_groups", None)
    if not mixed and len(groups) > 1:
        d["block_groups"] = groups
    return SearchSpace.from_dict(d)


def run(groups: list[list[str]], mode: str, epochs: int, seed: int = 0) -> dict:
    """Train one supernet; returns last-epoch train accuracy, overall and per group."""
    data = load_dataset("digits", seed=0)
    info = data.info
    grouped = make_space(groups, mixed=False)
    mixed = make_space(groups, mixed=True)
    context = {"separate dense weights": separate_dense_weights,
               "groups, stem per group": stem_per_group}.get(mode, contextlib.nullcontext)
    with context():
        torch.manual_seed(seed)
        # built from the space without groups, the supernet has one stem and head for all paths
        built = mixed if mode in ("per layer", "groups, one stem") else grouped
        net = Supernet(built, info.in_channels, info.num_classes, info.mean, info.std)
        net.space = mixed if mode == "per layer" else grouped
        if mode == "groups, one stem":  # every group through the one stem and head
            net.sub_of_group = [0] * len(grouped.groups)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        for _ in range(epochs):
            net.train()
            correct, seen = np.zeros(len(groups)), np.zeros(len(groups))
            total_correct = total_seen = 0
            for x, y in data.train.batches(64, shuffle=True, generator=gen):
                g = net.space.sample(rng)
                net.set_active(g)
                out = net(x)
                loss = F.cross_entropy(out, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                hits = int((out.argmax(1) == y).sum())
                total_correct, total_seen = total_correct + hits, total_seen + len(y)
                if _single_group(grouped, g):  # per group: only paths that stay in one group
                    k = grouped.group_of(g)
                    correct[k] += hits
                    seen[k] += len(y)
            acc = 100.0 * total_correct / max(total_seen, 1)
    per_group = {"|".join(gr): 100.0 * c / n for gr, c, n in zip(groups, correct, seen) if n}
    return {"last_epoch_train_acc": acc, "per_group": per_group}


def _single_group(space: SearchSpace, g) -> bool:
    try:
        space.group_of(g)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sets", nargs="*", default=None, help="labels to run (default: all)")
    ap.add_argument("--out", default="bench/results/block_mixing.json")
    ap.add_argument("--add", action="store_true", help="keep the other rows already in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = json.loads(Path(args.out).read_text())["results"] if args.add and Path(args.out).exists() else {}
    for label, (groups, mode) in SETS.items():
        if args.sets and label not in args.sets:
            continue
        t0 = time.perf_counter()
        runs = [run(groups, mode, args.epochs, seed) for seed in args.seeds]
        acc = float(np.mean([r["last_epoch_train_acc"] for r in runs]))
        per_group = {k: float(np.mean([r["per_group"].get(k, np.nan) for r in runs]))
                     for k in runs[0]["per_group"]}
        res[label] = {"groups": groups, "mode": mode, "last_epoch_train_acc": acc, "per_group": per_group,
                      "per_seed": runs, "seconds": time.perf_counter() - t0}
        per = "  ".join(f"{k}: {v:.1f}" for k, v in per_group.items()) if len(groups) > 1 else ""
        print(f"{label:<44} {acc:5.1f} %  {per}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    doc = {"epochs": args.epochs, "seeds": args.seeds, "results": {k: res[k] for k in SETS if k in res}}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    return res


if __name__ == "__main__":
    main()
