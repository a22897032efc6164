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
from scipy.stats import kendalltau

from nasctl.nas.attacks import PGD, accuracy_under_attack
from nasctl.nas.data import load_dataset
from nasctl.nas.runs.select import run_supernet
from nasctl.nas.supernet import init_weights
from nasctl.nas.supernet.checkpoint import load_supernet
from nasctl.nas.training.subnet import SubnetTrainConfig, adversarial_train


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


def bootstrap_tau(x: list[float], y: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of Kendall's tau over resampled (x, y) pairs."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    taus = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        t = kendalltau(x[i], y[i]).statistic
        if np.isfinite(t):
            taus.append(t)
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--mode", choices=("finetune", "scratch"), default="finetune",
                    help="finetune: from the inherited weights, as the search's fine-tune stage ships them "
                    "(default); scratch: re-initialised")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: the fine-tune stage's epochs (finetune) or the supernet's (scratch)")
    ap.add_argument("--out", default="bench/results/ranking.json")
    args = ap.parse_args(argv)
    from nasctl.nas.supernet import BNCalibration, prepare_subnet
    from nasctl.nas.training.subnet import FinetuneConfig

    run = Path(args.run)
    doc = json.loads((run / "pareto.json").read_text())
    loaded = load_supernet(run_supernet(run, doc))
    eps = loaded.eps
    data = load_dataset(loaded.dataset["name"], seed=int(loaded.config.get("seed", 0)))
    ft = FinetuneConfig()
    stage_epochs = int((doc.get("finetune") or {}).get("epochs") or ft.epochs)
    epochs = args.epochs or (stage_epochs if args.mode == "finetune" else int(loaded.config["epochs"]))
    val = data.val.subset(doc["val_images"])
    rows = []
    for rec in pick_subnets(run, args.n):
        t0 = time.perf_counter()
        model = loaded.supernet.extract(loaded.space.parse(rec["genome"]))
        if args.mode == "scratch":
            init_weights(model, seed=0)
        else:
            calib = doc.get("bn_calibration") or {}  # the search's own BN setting, as its fine-tune stage
            prepare_subnet(model, data.train, BNCalibration(int(calib.get("batches", 4)),
                                                            seed=int(calib.get("seed", doc.get("seed", 0)))))
        lr = ft.lr if args.mode == "finetune" else SubnetTrainConfig.lr
        adversarial_train(model, data, SubnetTrainConfig(epochs=epochs, eps=eps, lr=lr))
        r = accuracy_under_attack(model, val, PGD(eps=eps, steps=20), seed=0)
        clean, adv = r.clean_acc, r.adv_acc
        # the same networks on the test images too: 200 validation images leave +-2 points of noise on
        # fine-tuned accuracies that span only a few points, which caps any tau; val + test is 597 images
        t_adv = accuracy_under_attack(model, data.test, PGD(eps=eps, steps=20), seed=0).adv_acc
        n_val, n_test = len(val), len(data.test)
        rows.append({"genome": rec["genome"], "params": rec["params"], "inherited_clean": rec["clean_acc"],
                     "inherited_adv": rec["adv_acc"], "trained_clean": clean, "trained_adv": adv,
                     "trained_adv_val_test": (adv * n_val + t_adv * n_test) / (n_val + n_test),
                     "truth_images_val_test": n_val + n_test, "seconds": time.perf_counter() - t0})
        print(f"{rec['params']:>7,}  search score {rec['clean_acc']:5.1f}/{rec['adv_acc']:5.1f}  {args.mode} "
              f"{clean:5.1f}/{adv:5.1f}  {rec['genome']}", flush=True)
    score = [r["inherited_adv"] for r in rows]
    sizes = [r["params"] for r in rows]

    def tau(x: list[float], y: list[float]) -> tuple[float, float, list[float]]:
        """Kendall's tau, its p-value and its 95 % bootstrap interval."""
        t = kendalltau(x, y)
        return float(t.statistic), float(t.pvalue), list(bootstrap_tau(x, y))

    res: dict = {"run": str(run), "mode": args.mode, "epochs": epochs, "eps": eps, "n": len(rows)}
    for suffix, truth in (("", [r["trained_adv"] for r in rows]),
                          ("_val_test", [r["trained_adv_val_test"] for r in rows])):
        res[f"kendall_tau_adv{suffix}"], res[f"p_adv{suffix}"], res[f"kendall_tau_adv{suffix}_ci95"] = \
            tau(score, truth)
        res[f"kendall_tau_params{suffix}"], _, res[f"kendall_tau_params{suffix}_ci95"] = tau(sizes, truth)
    clean_tau = kendalltau([r["inherited_clean"] for r in rows], [r["trained_clean"] for r in rows])
    res["kendall_tau_clean"], res["p_clean"] = float(clean_tau.statistic), float(clean_tau.pvalue)
    res["rows"] = rows
    lo, hi = res["kendall_tau_adv_ci95"]
    plo, phi = res["kendall_tau_params_ci95"]
    ci, pci = res["kendall_tau_adv_val_test_ci95"], res["kendall_tau_params_val_test_ci95"]
    print(f"against PGD-20 on val + test ({rows[0]['truth_images_val_test'] if rows else 0} images): "
          f"search score {res['kendall_tau_adv_val_test']:.3f} ({ci[0]:.2f} .. {ci[1]:.2f}), "
          f"parameter count {res['kendall_tau_params_val_test']:.3f} ({pci[0]:.2f} .. {pci[1]:.2f})")
    print(f"Kendall tau, search score (inherited val PGD) vs {args.mode} val PGD-20: "
          f"{res['kendall_tau_adv']:.3f} (95 % CI {lo:.2f} .. {hi:.2f}, p={res['p_adv']:.3g}); "
          f"parameter count alone: {res['kendall_tau_params']:.3f} ({plo:.2f} .. {phi:.2f}); "
          f"clean: {res['kendall_tau_clean']:.3f}; n={len(rows)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"written {args.out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
