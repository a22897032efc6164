"""``nasctl eval``: strong robustness evaluation of chosen subnets on the test split."""

from __future__ import annotations

import argparse

from ._common import add_config_flags, add_run_flags, add_threads_flag, command_parser, config_overrides


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(sub, name, help_text, "Writes runs/eval/<stamp>/eval.json. A front member the search "
                       "fine-tuned is evaluated with its fine-tuned weights.")
    add_run_flags(p, run_help="search run folder (its pareto.json)", pick_metavar="knee|all|INDEX|GENOME",
                  pick_help="knee (default), all, an index into the front, or a genome string")
    p.add_argument("--checkpoint", "--supernet", dest="checkpoint", metavar="CKPT",
                   help="supernet checkpoint (with --arch), or a fine-tuned subnet.pt (no --arch needed)")
    p.add_argument("--arch", action="append", metavar="GENOME", help="genome string (repeatable)")
    p.add_argument("--steps", type=int, help="PGD steps (default 50)")
    p.add_argument("--restarts", type=int, help="PGD random restarts (default 5)")
    p.add_argument("--square-queries", type=int, help="query-only Square attack: queries per image "
                   "(default 1000; 0 skips it)")
    p.add_argument("--autoattack", choices=("standard", "apgd", "off"),
                   help="AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square; the default), apgd "
                   "(APGD-CE + APGD-T: much faster on a CPU, named as such in eval.json) or off")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the training eps)")
    p.add_argument("--n-images", type=int, help="evaluate on the first N test images only")
    p.add_argument("--data-dir", help="folder of a torchvision data set")
    add_threads_flag(p)
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.nas.runs.eval import EvalConfig, evaluate_subnets

    cfg = merge_config(EvalConfig, args.config, config_overrides(args, EvalConfig))

    def show(r: dict) -> None:
        attacks = "  ".join(f"{k} {v['acc']:.1f}" for k, v in r["attacks"].items())
        print(f"{r['genome']} ({r['weights']} weights)\n  clean {r['clean_acc']:.1f} %  robust (min) "
              f"{r['robust_acc']:.1f} %  [{attacks}]  eps={r['eps']:.4g}, {r['images']} test images")

    path = evaluate_subnets(cfg, show)
    print(f"written: {path}")
    return 0
