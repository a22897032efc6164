"""``nasctl search``: the main job -- NSGA-II over a trained supernet, the Pareto front and its plots."""

from __future__ import annotations

import argparse
import json

from ._common import (
    STORE_HELP,
    add_config_flags,
    add_dataset_flags,
    add_device_flag,
    add_epoch_selection_flags,
    add_tradeoff_flags,
    command_parser,
    config_overrides,
    dataset_from_args,
    epoch_progress,
    progress_bar,
)


def add_parser(sub, name: str, help_text: str) -> None:
    from nasctl.nas.space import builtin_spaces

    p = command_parser(sub, name, help_text, "With no arguments: trains a small supernet on the embedded "
                       "digits data set, searches it, and writes the front, plots and layer statistics to "
                       "runs/search/<stamp>/.")
    g = p.add_argument_group("search")
    g.add_argument("--supernet", metavar="CKPT", help="trained supernet (supernet.pt or its run folder); "
                   "without it, one is trained first")
    add_dataset_flags(g)
    g.add_argument("--space", help="space for the supernet trained first (auto, "
                   f"{', '.join(builtin_spaces())} or a YAML file; default: the data set's own, auto for "
                   "folder: and npz: data)")
    g.add_argument("--width-mult", type=float, help="width multiplier of the supernet trained first")
    g.add_argument("--epochs", type=int, help="epochs of the supernet trained first")
    g.add_argument("--train-subset", type=int, metavar="N",
                   help="the supernet trained first sees a seeded, class-balanced subset of N training "
                   "images (the search and fine-tune stage then use the same images)")
    g.add_argument("--test-size", type=int, metavar="N",
                   help="score the front and the fine-tuned members on the first N test images "
                   "(default all)")
    g.add_argument("--algorithm", help="nsga2 (default) or random (the baseline at the same budget)")
    g.add_argument("--objectives", help="comma-separated from clean_acc, adv_acc, params, int8_bytes, macs, "
                   "latency_ms (default clean_acc,adv_acc,params)")
    g.add_argument("--pop-size", type=int, help="population size (default 20)")
    g.add_argument("--generations", type=int, help="generations (default 10)")
    g.add_argument("--mutation-genes", type=float,
                   help="NSGA-II: expected genes redrawn per offspring (default 2)")
    g.add_argument("--max-params", type=int, help="constraint: at most this many parameters")
    g.add_argument("--max-latency-ms", type=float, help="constraint: latency budget (needs --latency-source)")
    g.add_argument("--latency-source", metavar="KIND:DEVICE",
                   help="where latency_ms comes from: lut:host (the host's calibrated lookup table, built by "
                   "nasctl profile --build-lut) or measure:host (convert and time every candidate)")
    g.add_argument("--latency-precision", choices=("int8", "float32"),
                   help="TFLite precision whose latency counts (default int8, what nasctl export ships)")
    g.add_argument("--latency-threads", type=int, help="threads the latency is measured with (default 1)")
    g.add_argument("--no-check-latency", dest="check_latency", action="store_false", default=None,
                   help="with a lut: source, do not time the front for real after the search (by default "
                   "each member gets measured_latency_ms and, with --max-latency-ms, a violation flag)")
    g.add_argument("--store", metavar="FILE", help=STORE_HELP)
    g.add_argument("--min-clean-acc", type=float, help="constraint: clean validation accuracy, percent")
    g.add_argument("--eps", type=float, help="L-inf budget (default: the supernet's training eps)")
    g.add_argument("--pgd-steps", type=int, help="search-time PGD steps (default 10)")
    g.add_argument("--val-size", type=int, help="validation images per candidate (default 200)")
    g.add_argument("--finetune-members", type=int,
                   help="front members fine-tuned at the end, spread over size, the knee among them "
                   "(default 6; 0: none)")
    g.add_argument("--finetune-epochs", type=int,
                   help="adversarial fine-tuning epochs per member (default 40)")
    add_epoch_selection_flags(g, "finetune-")
    add_tradeoff_flags(g, "finetune-", many=True)
    add_device_flag(g)
    g.add_argument("--workers", help="worker processes for the candidates, the front's final evaluation and "
                   "the fine-tune stage: auto (default: one per GPU, or one per core with one thread each) "
                   "or N (1: all in this process); results are the same, written in the same order")
    g.add_argument("--workers-per-gpu", type=int, help="with --workers auto on CUDA: workers sharing each "
                   "GPU (default 1; tiny nets leave a GPU idle, so several keep it busy)")
    g.add_argument("--resume", metavar="RUN", help="continue the search run folder RUN")
    add_config_flags(p)
    p.set_defaults(func=run)


def _progress():
    from nasctl.nas.search import SearchCallbacks
    from nasctl.nas.search.objectives import OBJECTIVES

    class Bars(SearchCallbacks):
        bar = None

        def on_generation(self, st, total):
            if self.bar is None:
                self.bar = progress_bar(total, "search", "gen")
            best = " ".join(f"{k}={v:.1f}" if OBJECTIVES[k].maximize else
                            (f"{k}={v:.3g}" if k == "latency_ms" else f"{k}={v:,.0f}")
                            for k, v in st.best.items()) or "none meets the constraints yet"
            # refresh=False: drawn by update() together with the new count, not a generation early
            self.bar.set_postfix_str(f"evals={st.evaluations} HV={st.hypervolume:.4f} best: {best}",
                                     refresh=False)
            self.bar.update(1)
            if self.bar.n >= total:
                self.bar.close()

    return Bars()


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.nas.runs.search import resume_search, search
    from nasctl.nas.search import SearchConfig
    from nasctl.profiling.source import LatencySources

    if args.resume:
        path = resume_search(args.resume, _progress(), epoch_progress(), latency=LatencySources())
    else:
        dataset_from_args(args)
        overrides = config_overrides(args, SearchConfig)
        cfg = merge_config(SearchConfig, args.config, overrides)
        if args.train_subset is not None:  # a setting of the supernet trained first
            cfg.train = {**(cfg.train or {}), "train_subset": args.train_subset}
            cfg.validate()
        path = search(cfg, _progress(), epoch_progress(), latency=LatencySources())
    from nasctl.workers import world

    if world()[0] == 0:  # under torchrun: rank 0 speaks for the run
        print_front(path)
    return 0


def print_front(path) -> None:
    from nasctl.nas.render.outputs import aa_gap_line, aa_gaps
    from nasctl.nas.render.tables import front_table

    doc = json.loads(path.read_text())
    front, knee = doc["front"], doc["knee"]
    fa = doc.get("final_attack") or {}
    print(f"\nPareto front: {len(front)} subnets from {doc['evaluations']} evaluated "
          f"({doc['dataset']}, L-inf eps={doc['eps']:.4g}; val = PGD-{doc['search_attack']['steps']} on "
          f"{doc['val_images']} validation images, "
          f"test = PGD-{fa.get('steps')} x{fa.get('restarts')} restarts)")
    tuned = any("finetuned_adv_acc" in r for r in front)
    aa = any(r.get("finetuned_aa_acc") is not None for r in front)
    print(front_table(front, knee, bool(doc.get("latency"))).text(last="genome"))
    ft_meta = doc.get("finetune") or {}
    note = ("; fine-tuned = trained on its own, same test attack" if tuned else "")
    if aa:
        note += f"; fine-tuned AA = {ft_meta.get('autoattack')} on the same test images"
    more = list(ft_meta.get("tradeoffs") or [])[1:]  # the first is the front table's
    if tuned and more:
        note += f"; the {', '.join(more)} entries are in summary.md"
    for gap in aa_gaps(front):
        print(f"warning: {aa_gap_line(*gap)}")
    check = doc.get("latency_check") or {}
    if check.get("measured") and check.get("max_latency_ms") is not None:
        bad = ", ".join(f"#{i}" for i in check.get("violators", [])) or "none"
        print(f"latency check: {check['measured']} members measured on {check['source']}; above "
              f"--max-latency-ms {check['max_latency_ms']:g}: {bad}")
    print(f"(* knee: the default pick of nasctl export{note})\nrun folder: {path.parent}  "
          f"(read summary.md first)")
