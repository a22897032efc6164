"""``nasctl eval``: strong robustness evaluation of chosen subnets on the test split."""

from __future__ import annotations

import argparse


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + ". Writes runs/eval/<stamp>/eval.json.")
    p.add_argument("--run", dest="run_dir", help="search run folder (its pareto.json)")
    p.add_argument("--pick", help="knee (default), all, an index into the front, or a genome string")
    p.add_argument("--supernet", "--checkpoint", dest="supernet", metavar="CKPT",
                   help="supernet checkpoint (with --arch), or a fine-tuned subnet.pt (no --arch needed)")
    p.add_argument("--arch", action="append", metavar="GENOME", help="genome string (repeatable)")
    p.add_argument("--steps", type=int, default=50, help="PGD steps (default 50)")
    p.add_argument("--restarts", type=int, default=5, help="PGD random restarts (default 5)")
    p.add_argument("--eps", type=float, help="L-inf budget (default: the supernet's training eps)")
    p.add_argument("--n-images", type=int, help="evaluate on the first N test images only")
    p.add_argument("--data-dir", help="folder of a torchvision data set")
    p.add_argument("--run-root", default="runs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.core import atomic_write_json
    from nasctl.nas.checkpoint import load_supernet
    from nasctl.nas.data import load_dataset
    from nasctl.nas.errors import NasctlError
    from nasctl.nas.evaluate import CandidateEvaluator
    from nasctl.nas.robust_eval import StrongEvalConfig, strong_evaluation
    from nasctl.nas.runs import make_run_dir, write_run_config
    from nasctl.nas.select import pick_from_run, read_front

    cfg = StrongEvalConfig(steps=args.steps, restarts=args.restarts, n_images=args.n_images, seed=args.seed,
                           eps=args.eps)
    cfg.validate()  # before any file is read or written
    from nasctl.nas.checkpoint import FORMAT, read_checkpoint
    from nasctl.nas.subnet_ckpt import SUBNET_FORMAT, subnet_from_checkpoint

    if args.supernet and not args.run_dir:
        ckpt = read_checkpoint(args.supernet, formats=(FORMAT, SUBNET_FORMAT))
        if ckpt["format"] == SUBNET_FORMAT:
            return _eval_subnet(subnet_from_checkpoint(ckpt), cfg, args)
    run_doc: dict = {}
    if args.run_dir:
        run_dir, run_doc = read_front(args.run_dir)
        picks = ([pick_from_run(run_dir, i) for i in range(len(run_doc["front"]))] if args.pick == "all"
                 else [pick_from_run(run_dir, args.pick or "knee")])
        ckpt = args.supernet or picks[0].checkpoint
        arches = args.arch or [p.genome for p in picks]
    elif args.supernet and args.arch:
        ckpt, arches = args.supernet, args.arch
    else:
        raise NasctlError("say which subnet: --run RUN [--pick knee|all|INDEX|GENOME] "
                          "or --supernet CKPT --arch GENOME")
    loaded = load_supernet(ckpt)
    genomes = [loaded.space.parse(a) for a in arches]
    ds = loaded.dataset
    eps = cfg.eps if cfg.eps is not None else loaded.eps
    data = load_dataset(ds["name"], args.data_dir or run_doc.get("data_dir"),
                        seed=int(loaded.config.get("seed", 0)), val_size=loaded.config.get("val_size"))
    out_dir = make_run_dir(args.run_root, "eval")
    write_run_config(out_dir, "eval", cfg, {"supernet": loaded.path, "genomes": [g.encode() for g in genomes],
                                            "eps": eps})
    ev = CandidateEvaluator(loaded.supernet, data, eps, seed=args.seed)
    results = []
    for g in genomes:
        r = strong_evaluation(ev.subnet(g), g.encode(), data.test, eps, ds, cfg)
        results.append(r)
        _print(g.encode(), r, eps)
    atomic_write_json(out_dir / "eval.json", {"supernet": loaded.path, "eps": eps, "results": results})
    print(f"written: {out_dir / 'eval.json'}")
    return 0



def _eval_subnet(sub, cfg, args) -> int:
    """A fine-tuned subnet checkpoint: its own weights and BatchNorm statistics, nothing recalibrated."""
    from nasctl.core import atomic_write_json
    from nasctl.nas.data import load_dataset
    from nasctl.nas.robust_eval import strong_evaluation
    from nasctl.nas.runs import make_run_dir, write_run_config

    eps = cfg.eps if cfg.eps is not None else sub.eps
    data = load_dataset(sub.dataset["name"], args.data_dir, seed=int(sub.train_config.get("seed", 0)),
                        val_size=sub.train_config.get("val_size"))
    out_dir = make_run_dir(args.run_root, "eval")
    write_run_config(out_dir, "eval", cfg, {"checkpoint": sub.path, "genomes": [sub.genome], "eps": eps})
    r = strong_evaluation(sub.model, sub.genome, data.test, eps, sub.dataset, cfg)
    _print(sub.genome, r, eps)
    atomic_write_json(out_dir / "eval.json", {"checkpoint": sub.path, "eps": eps, "results": [r]})
    print(f"written: {out_dir / 'eval.json'}")
    return 0


def _print(genome: str, r: dict, eps: float) -> None:
    attacks = "  ".join(f"{k} {v['acc']:.1f}" for k, v in r["attacks"].items())
    print(f"{genome}\n  clean {r['clean_acc']:.1f} %  robust (min) {r['robust_acc']:.1f} %  "
          f"[{attacks}]  eps={eps:.4g}, {r['images']} test images")
