"""Measurement: do fine-tuned members of a search's front reach the hand-designed baselines?

    python bench/bench_finetune_front.py RUN --out bench/cache/ft          # then:
    python bench/bench_baselines.py --run bench/cache/ft

For each baseline of ``bench_baselines.py`` it picks up to ``--per-baseline`` members of the run's
front with at most the baseline's parameters (as the issue counts them), those with the best
inherited PGD accuracy, and trains each with the baselines' recipe (``adversarial_train``, 40
epochs, lr 0.05) starting from the weights inherited from the run's supernet (``Supernet.extract``,
BatchNorm statistics recalibrated on the training split first), or from a fresh initialisation with
``--from-scratch``. Scores come from the same final attack (``final_accuracy``). The run's files
are not touched: ``OUT/pareto.json`` is a copy of the front with ``finetuned_*`` fields on the
members trained here, for ``bench_baselines.py --run OUT``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nasctl.nas.data import load_dataset
from nasctl.nas.runs.select import read_front, run_supernet
from nasctl.nas.search.evaluator import final_accuracy
from nasctl.nas.supernet import build_subnet, recalibrate_bn
from nasctl.nas.supernet.checkpoint import load_supernet
from nasctl.nas.training.subnet import adversarial_train


def _baselines():
    path = Path(__file__).with_name("bench_baselines.py")
    spec = importlib.util.spec_from_file_location("bench_baselines", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="search run folder (pareto.json)")
    ap.add_argument("--out", required=True, help="folder for the annotated copy of pareto.json")
    ap.add_argument("--per-baseline", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the baselines' recipe (40)")
    ap.add_argument("--from-scratch", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bb = _baselines()
    run_dir, doc = read_front(args.run)
    loaded = load_supernet(run_supernet(run_dir, doc))
    data = load_dataset(doc["dataset"], seed=int(doc.get("seed", 0)))
    cfg = replace(bb.RECIPE, eps=float(doc["eps"]), **({"epochs": args.epochs} if args.epochs else {}))
    front = [dict(e) for e in doc["front"]]
    chosen: list[int] = []
    for issue_params, _ in bb.BASELINES.values():
        within = sorted((i for i, e in enumerate(front) if e["params"] <= issue_params),
                        key=lambda i: (-front[i]["final_adv_acc"], front[i]["params"]))
        chosen += [i for i in within[: args.per_baseline] if i not in chosen]
    info = data.info
    for i in sorted(chosen, key=lambda i: front[i]["params"]):
        e = front[i]
        t0 = time.perf_counter()
        if args.from_scratch:
            model = build_subnet(loaded.space, e["genome"], info.in_channels, info.num_classes, info.mean,
                                 info.std, seed=cfg.seed)
        else:
            model = loaded.supernet.extract(loaded.space.parse(e["genome"]))
            recalibrate_bn(model, (x for x, _ in data.train.batches(256)))
        adversarial_train(model, data, cfg)
        final = final_accuracy(model, e["genome"], data.test, cfg.eps, cfg.seed + 1)  # seeded as the search's
        e.update(finetuned_clean_acc=final["clean_acc"], finetuned_adv_acc=final["adv_acc"],
                 finetuned_from="scratch" if args.from_scratch else "inherited",
                 finetuned_seconds=time.perf_counter() - t0)
        print(f"{e['params']:>7,}  inherited {e['final_clean_acc']:5.1f} / {e['final_adv_acc']:5.1f}  ->  "
              f"{e['finetuned_from']} + {cfg.epochs} epochs {e['finetuned_clean_acc']:5.1f} / "
              f"{e['finetuned_adv_acc']:5.1f}  {e['genome']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {**doc, "front": front, "finetune_recipe": asdict(cfg), "source_run": str(run_dir)}
    (out / "pareto.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
