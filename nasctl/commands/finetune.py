"""``nasctl finetune``: adversarially train one front member of a search run on its own."""

from __future__ import annotations

import argparse
import json

from ._common import (
    add_config_flags,
    add_device_flag,
    add_epoch_selection_flags,
    add_run_flags,
    add_tradeoff_flags,
    command_parser,
    config_overrides,
    progress_bar,
)


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(sub, name, help_text, "Writes runs/finetune/<stamp>/ with subnet.pt (for nasctl "
                       "eval/export --checkpoint) and result.json; the search run is only read.")
    g = p.add_argument_group("what to train")
    add_run_flags(g)
    g.add_argument("--from-scratch", action="store_true", default=None,
                   help="re-initialise the weights instead of starting from the inherited ones")
    g = p.add_argument_group("recipe (the supernet's: PGD-7 adversarial training, step eps/4, SGD cosine)")
    g.add_argument("--epochs", type=int, help="training epochs (default 40)")
    g.add_argument("--lr", type=float, help="initial learning rate (default 0.05)")
    g.add_argument("--eps", type=float, help="L-inf radius (default: the search's)")
    add_epoch_selection_flags(g)
    add_tradeoff_flags(g)
    add_device_flag(g)
    add_config_flags(p)
    p.set_defaults(func=run)


def _progress():
    bar = {}

    def on_epoch(epoch: int, loss: float) -> None:
        if "b" not in bar:
            bar["b"] = progress_bar(None, "finetune", "epoch")
        bar["b"].set_postfix(loss=f"{loss:.3f}")
        bar["b"].update(1)

    return on_epoch


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.nas.runs.finetune import finetune
    from nasctl.nas.training.subnet import FinetuneConfig

    overrides = config_overrides(args, FinetuneConfig)
    cfg = merge_config(FinetuneConfig, args.config, overrides)
    path = finetune(cfg, _progress())
    r = json.loads(path.read_text())
    a = r["attack"]
    kept = (f" (kept epoch {r['chosen_epoch']} of {r['epochs_run']}, best on validation)"
            if r.get("selection", {}).get("mode") == "best" else "")
    print(f"\n{r['genome']} ({r['params']:,} params), {r['epochs']} epochs{kept} from "
          f"{'scratch' if r['from_scratch'] else 'inherited weights'}, "
          f"trade-off {r.get('tradeoff', 'robust')}:\n"
          f"  test clean {r['clean_acc']:.1f} %  PGD-{a['steps']} x{a['restarts']} {r['adv_acc']:.1f} %  "
          f"(eps {r['eps']:.4g}, {r['images']} test images)\n"
          + (f"  {r['aa_attack']['attack']} {r['aa_acc']:.1f} %\n" if r.get("aa_attack") else "") +
          f"checkpoint: {path.parent / r['checkpoint']}")
    return 0
