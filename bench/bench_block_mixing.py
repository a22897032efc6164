"""Benchmark: does a weight-sharing supernet train when a layer mixes block families?

    python bench/bench_block_mixing.py --epochs 6 --out bench/results/block_mixing.json

Clean training (no attack, to isolate the effect), uniform path sampling (a new random subnet
every batch), digits layout, SGD lr 0.05: the mean training accuracy of the sampled subnets in the
last epoch, for several block sets. This is the measurement behind the built-in digits space
offering only the inverted-residual family.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nasctl.nas.data import load_dataset
from nasctl.nas.space import SearchSpace, load_space
from nasctl.nas.supernet import Supernet

SETS = {
    "ir (k3/k5 x e3/e6) + skip": ["ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "skip"],
    "ir + dsc + skip": ["ir_k3_e3", "ir_k3_e6", "dsc_k3", "skip"],
    "ir + dsc + ghost + shuffle + skip": ["ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "dsc_k3", "ghost", "shuffle",
                                          "skip"],
    "dsc only": ["dsc_k3"],
    "shuffle only": ["shuffle"],
    "dsc + shuffle": ["dsc_k3", "shuffle"],
}


def run(blocks: list[str], epochs: int, seed: int = 0) -> float:
    data = load_dataset("digits", seed=0)
    info = data.info
    space = SearchSpace.from_dict({**load_space("digits").to_dict(), "blocks": blocks})
    torch.manual_seed(seed)
    net = Supernet(space, 1, 10, info.mean, info.std)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    acc = 0.0
    for _ in range(epochs):
        net.train()
        correct = n = 0
        for x, y in data.train.batches(64, shuffle=True, generator=gen):
            net.set_active(space.sample(rng))
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
        acc = 100.0 * correct / n
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default="bench/results/block_mixing.json")
    args = ap.parse_args()
    res = {}
    for label, blocks in SETS.items():
        res[label] = {"blocks": blocks, "last_epoch_train_acc": run(blocks, args.epochs)}
        print(f"{label:<36} {res[label]['last_epoch_train_acc']:5.1f} %", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"epochs": args.epochs, "results": res}, indent=2))


if __name__ == "__main__":
    main()
