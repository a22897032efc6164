"""Flags and progress display shared by the subcommands (the only place that draws bars)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    g.add_argument("--seed", type=int, help="seed for every random choice (default 0)")
    g.add_argument("--name", help="suffix of the run folder name")
    g.add_argument("--run-root", help="where run folders go (default runs/)")


def config_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Flags that name a field of config ``cls`` and were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def epoch_progress():
    """A TrainCallbacks object that draws one tqdm bar per epoch on stderr."""
    from tqdm import tqdm

    from nasctl.nas.train import TrainCallbacks

    class _Bars(TrainCallbacks):
        bar = None

        def on_epoch_start(self, epoch, epochs, n_batches):
            self.bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", file=sys.stderr, leave=False,
                            dynamic_ncols=True)

        def on_batch(self, loss, clean_acc, adv_acc):
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", clean=f"{clean_acc:.1f}", adv=f"{adv_acc:.1f}")

        def on_epoch_end(self, m):
            if self.bar is not None:
                self.bar.close()
            val = "  ".join(f"{k} {v['clean_acc']:.1f}/{v['adv_acc']:.1f}" for k, v in m.val.items())
            val = f"  val clean/PGD {val}" if val else ""
            flag = ("  CATASTROPHIC OVERFITTING: stopped, best weights restored" if m.catastrophic_overfitting
                    else "")
            print(f"epoch {m.epoch:>3}  loss {m.loss:.3f}  train clean/adv {m.train_clean_acc:.1f}/"
                  f"{m.train_adv_acc:.1f}{val}  {m.seconds:.1f}s  {m.images_per_s:.0f} img/s{flag}",
                  file=sys.stderr, flush=True)

    return _Bars()
