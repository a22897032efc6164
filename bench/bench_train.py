"""Benchmark: adversarial-training throughput of the supernet vs a plain network of the same
architecture (weight-sharing overhead), and the default `nasctl train` run on digits.

    python bench/bench_train.py --out bench/results/train.json

Both models run the *same* loop (nasctl.nas.training.subnet.adversarial_train: PGD-7, batch 64, SGD):
once with the supernet pinned to one subnet (slim layers slicing the largest weights), once with
that subnet extracted as ordinary nn.Conv2d/BatchNorm2d layers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nasctl.nas.data import DataSplits, load_dataset
from nasctl.nas.space import load_space
from nasctl.nas.supernet import Supernet
from nasctl.nas.training.subnet import SubnetTrainConfig, adversarial_train


class _Pinned(torch.nn.Module):
    """The supernet with one active path, as a module the training loop can treat like any other."""

    def __init__(self, net: Supernet, genome):
        super().__init__()
        self.net = net
        net.set_active(genome)

    def forward(self, x):
        return self.net(x)


def throughput(space_name: str, genome, data: DataSplits, epochs: int, repeats: int, device: str) -> dict:
    info = data.info
    cfg = SubnetTrainConfig(epochs=epochs, eps=info.default_eps)
    out = {}
    for label in ("supernet", "static"):
        rates = []
        for r in range(repeats):
            torch.manual_seed(r)
            net = Supernet(load_space(space_name), info.in_channels, info.num_classes, info.mean, info.std)
            model = _Pinned(net, genome) if label == "supernet" else net.extract(genome)
            rates.append(adversarial_train(model, data, cfg, device)["images_per_s"])
        out[label] = {"images_per_s_median": float(np.median(rates)), "runs": rates}
    out["overhead_pct"] = 100.0 * (out["static"]["images_per_s_median"]
                                   / out["supernet"]["images_per_s_median"] - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results/train.json")
    args = ap.parse_args()
    data = load_dataset("digits", seed=0)
    space = load_space("digits")
    rng = np.random.default_rng(0)
    genomes = {"largest": space.largest(), "smallest": space.smallest(), "random": space.sample(rng)}
    results = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "epochs": args.epochs, "subnets": {}}
    for label, g in genomes.items():
        t0 = time.perf_counter()
        r = throughput("digits", g, data, args.epochs, args.repeats, args.device)
        results["subnets"][label] = {"genome": g.encode(), **r}
        print(f"{label:>8}: supernet {r['supernet']['images_per_s_median']:.0f} img/s, static "
              f"{r['static']['images_per_s_median']:.0f} img/s, overhead {r['overhead_pct']:+.1f} % "
              f"({time.perf_counter() - t0:.0f} s)  {g.encode()}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
