"""Benchmark: how faithfully inherited weights rank subnets (Kendall tau).

    python bench/bench_ranking.py --run runs/search/<stamp> --n 12 --out bench/results/ranking.json

Takes the front of a finished search plus archive members around it (spread over the parameter
range), trains each subnet stand-alone from scratch with the supernet's recipe (PGD-7, step eps/4,
SGD cosine, same epochs), evaluates clean and PGD-20 accuracy on the same validation images the
search used, and reports Kendall's tau (scipy) between inherited and stand-alone accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from nasctl.nas.checkpoint import load_supernet
from nasctl.nas.data import load_dataset
from nasctl.nas.finetune import SubnetTrainConfig, adversarial_train, reset_weights, robust_accuracy
from nasctl.nas.select import run_supernet
from scipy.stats import kendalltau


def pick_subnets(run: Path, n: int) -> list[dict]:
    """About half from the front and half from the rest of the archive, each spread evenly over
    the parameter range (so the ranking is tested on and around the front)."""
    doc = json.loads((run / "pareto.json").read_text())
    archive = [json.loads(ln) for ln in (run / "archive.jsonl").read_text().splitlines()]
    front = sorted(doc["front"], key=lambda r: r["params"])
    front_g = {r["genome"] for r in front}
    rest = sorted((r for r in archive if r["genome"] not in front_g), key=lambda r: r["params"])

    def spread(items: list[dict], k: int) -> list[dict]:
        if k <= 0 or not items:
            return []
        return [items[int(i)]
                for i in dict.fromkeys(np.linspace(0, len(items) - 1, min(k, len(items))).round())]

    return spread(front, (n + 1) // 2) + spread(rest, n // 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=None, help="default: the supernet's epochs")
    ap.add_argument("--out", default="bench/results/ranking.json")
    args = ap.parse_args()
    run = Path(args.run)
    doc = json.loads((run / "pareto.json").read_text())
    loaded = load_supernet(run_supernet(run, doc))
    eps = loaded.eps
    data = load_dataset(loaded.dataset["name"], seed=int(loaded.config.get("seed", 0)))
    epochs = args.epochs or int(loaded.config["epochs"])
    val = data.val.subset(doc["val_images"])
    rows = []
    for rec in pick_subnets(run, args.n):
        t0 = time.perf_counter()
        model = reset_weights(loaded.supernet.extract(loaded.space.parse(rec["genome"])), seed=0)
        adversarial_train(model, data, SubnetTrainConfig(epochs=epochs, eps=eps))
        clean, adv = robust_accuracy(model, val, eps, steps=20)
        rows.append({"genome": rec["genome"], "params": rec["params"], "inherited_clean": rec["clean_acc"],
                     "inherited_adv": rec["adv_acc"], "standalone_clean": clean, "standalone_adv": adv,
                     "seconds": time.perf_counter() - t0})
        print(f"{rec['params']:>7,}  inherited {rec['clean_acc']:5.1f}/{rec['adv_acc']:5.1f}  stand-alone "
              f"{clean:5.1f}/{adv:5.1f}  {rec['genome']}", flush=True)
    tau_adv = kendalltau([r["inherited_adv"] for r in rows], [r["standalone_adv"] for r in rows])
    tau_clean = kendalltau([r["inherited_clean"] for r in rows], [r["standalone_clean"] for r in rows])
    res = {"run": str(run), "epochs": epochs, "eps": eps, "n": len(rows),
           "kendall_tau_adv": float(tau_adv.statistic), "p_adv": float(tau_adv.pvalue),
           "kendall_tau_clean": float(tau_clean.statistic), "p_clean": float(tau_clean.pvalue), "rows": rows}
    print(f"Kendall tau (adv, inherited vs stand-alone): {res['kendall_tau_adv']:.3f} "
          f"(p={res['p_adv']:.3g}); "
          f"clean: {res['kendall_tau_clean']:.3f} (p={res['p_clean']:.3g}); n={len(rows)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
