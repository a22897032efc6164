"""``nasctl experiment transfer|width|finetune-vs-scratch``: TAM-NAS's three studies (docs/studies.md)."""

from __future__ import annotations

import argparse
import json

from ._common import (
    RUN_HELP,
    add_config_flags,
    add_dataset_flags,
    add_device_flag,
    command_parser,
    config_overrides,
    dataset_from_args,
)


def _floats(text: str) -> list[float]:
    from nasctl.errors import NasctlError

    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise NasctlError(
            f"--width-mult takes comma-separated numbers such as 0.5,1.0,1.5, got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    from nasctl.errors import NasctlError

    try:
        return [int(float(t.replace("_", ""))) for t in text.split(",") if t.strip()]
    except ValueError:
        raise NasctlError(
            f"--param-budgets takes comma-separated parameter counts such as 5000,20000, got {text!r}"
        ) from None


def _run_flags(p: argparse.ArgumentParser, members_default: str) -> None:
    p.add_argument("--run", metavar="RUN", help=RUN_HELP)
    p.add_argument(
        "--members",
        type=int,
        metavar="K",
        help=f"front members spread over size, the knee among them (default {members_default})",
    )


def add_parser(sub, name: str, help_text: str) -> None:
    from nasctl.nas.experiments import STUDIES

    p = command_parser(
        sub, name, help_text, "Each writes runs/experiment/<stamp>-<study>/ (config.json first, "
        "results.jsonl cell by cell, result.json, summary.md, CSV and PNG); docs/studies.md says how to read "
        "them."
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)

    t = command_parser(
        studies, "transfer", STUDIES["transfer"].help, "PGD crafted white-box on the supernet's largest path "
        "and on K front members, evaluated on every member: a (K+1) x K matrix of robust accuracies, its "
        "heat map, and whether the knee's robustness looks like gradient masking."
    )
    _run_flags(t, "min(5, front)")
    t.add_argument("--steps", type=int, help="PGD steps on each source (default: the run's final attack, 20)")
    t.add_argument("--restarts", type=int, help="PGD restarts (default: the run's final attack, 3)")
    t.add_argument("--eps", type=float, help="L-inf radius (default: the search's)")
    t.add_argument("--workers", help="worker processes crafting on the sources side by side: auto (default: "
                   "one per core or GPU, one thread each) or N (1: in this process)")
    t.add_argument(
        "--masking-margin",
        type=float,
        help="points by which transfer may beat white-box before it is flagged (default 5)",
    )

    w = command_parser(
        studies, "width", STUDIES["width"].help, "Train and search a supernet at each width multiplier with "
        "one (reduced, stated) budget, and compare the fronts: hypervolume on one common reference and "
        "scale, best PGD accuracy at matched parameter budgets. Defaults fit three widths on digits in under "
        "10 minutes on 2 CPU cores."
    )
    w.add_argument(
        "--width-mult", type=str, metavar="W1,W2,...", help="width multipliers (default 0.5,1.0,1.5)"
    )
    add_dataset_flags(w)
    w.add_argument("--space", help="search space (default: the data set's own)")
    w.add_argument("--epochs", type=int, help="supernet epochs per width (default 30, half the usual 60)")
    w.add_argument("--train-subset", type=int, metavar="N", help="class-balanced training subset")
    w.add_argument("--pop-size", type=int, help="NSGA-II population (default 16)")
    w.add_argument("--generations", type=int, help="generations (default 8)")
    w.add_argument("--final-restarts", type=int, help="PGD-20 restarts scoring each front (default 1)")
    w.add_argument("--test-size", type=int, metavar="N", help="score the fronts on the first N test images")
    w.add_argument(
        "--param-budgets",
        type=str,
        metavar="P1,P2,...",
        help="parameter budgets for the matched comparison (default: 5 log-spaced over the shared range)",
    )
    w.add_argument("--workers", help="worker processes for each width's candidates and front evaluation: "
                   "auto (default: one per core or GPU, one thread each) or N (1: in this process)")

    f = command_parser(
        studies, "finetune-vs-scratch", STUDIES["finetune-vs-scratch"].help, "For K front members: inherited "
        "weights, fine-tuned from them, and trained from scratch with the same budget; clean and PGD test "
        "accuracy side by side. Reuses the search's fine-tune stage where it trained a member with the same "
        "recipe and epochs."
    )
    _run_flags(f, "the members the search's fine-tune stage trained (6), else min(6, front)")
    f.add_argument(
        "--epochs", type=int, help="epochs of both trained arms (default: the search's fine-tune epochs)"
    )
    f.add_argument("--lr", type=float, help="learning rate of both trained arms (default 0.05)")
    f.add_argument("--workers", help="worker processes training the cells side by side: auto (default: one "
                   "per core or GPU, one thread each) or N (1: in this process)")

    for s in (t, w, f):  # what every study takes
        add_device_flag(s)
        s.add_argument(
            "--resume",
            metavar="DIR",
            help="finish the interrupted experiment folder DIR (its own settings; finished cells are kept)",
        )
        add_config_flags(s)
        s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.errors import NasctlError
    from nasctl.nas.experiments import STUDIES, resume_experiment
    from nasctl.nas.experiments.folder import reopen

    study = STUDIES[args.study]
    if args.resume:
        recorded = reopen(args.resume).study
        if recorded != study.name:
            raise NasctlError(
                f"--resume {args.resume!r} is a {recorded!r} experiment: resume it with "
                f"'nasctl experiment {recorded} --resume {args.resume}'"
            )
        path = resume_experiment(args.resume)
    else:
        cls, run_study = study.resolve()
        if getattr(args, "width_mult", None) is not None:
            args.width_mult = _floats(args.width_mult)
        if getattr(args, "param_budgets", None) is not None:
            args.param_budgets = _ints(args.param_budgets)
        dataset_from_args(args)
        cfg = merge_config(cls, args.config, config_overrides(args, cls))
        path = run_study(cfg)
    doc = json.loads((path / "result.json").read_text())
    from nasctl.nas.experiments.folder import markdown_table

    print("\n" + doc["title"] + "\n")
    print("\n".join(markdown_table(doc["table"])))
    for s in doc["findings"]:
        print(f"- {s}")
    print(f"experiment folder: {path}  (summary.md, result.json, {', '.join(doc['plots'])})")
    return 0
