"""Flags and progress display shared by the subcommands (the only place that draws bars)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

RUN_HELP = "search run folder (default: the newest under runs/search)"
STORE_HELP = "measurement store (default ~/.cache/nasctl/measurements.sqlite)"


def command_parser(sub, name: str, help_text: str, details: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command's parser whose description is its one-line help followed by ``details`` (what it
    writes, where to read more), so ``nasctl --help`` and ``nasctl CMD --help`` never disagree."""
    return sub.add_parser(name, help=help_text, description=f"{help_text}. {details}", **kwargs)


def add_run_flags(g, run_help: str = RUN_HELP, pick_help: str = "member of the run's front (default knee)",
                  pick_metavar: str = "knee|INDEX|GENOME") -> None:
    """``--run RUN --pick WHICH``: a member of a search run's front, as export, finetune and eval take it."""
    g.add_argument("--run", metavar="RUN", help=run_help)
    g.add_argument("--pick", metavar=pick_metavar, help=pick_help)


def add_device_flag(g) -> None:
    """``--device`` of the commands that train or attack with torch (not profile's host | adb:SERIAL)."""
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")


def add_phone_flags(g, benchmark_binary: bool = True) -> None:
    """``--adb`` (and ``--benchmark-binary``): the tools that reach a phone, as devices, bench and profile
    take them."""
    g.add_argument("--adb", metavar="PATH", help="adb executable (default: adb on PATH)")
    if benchmark_binary:
        g.add_argument("--benchmark-binary", metavar="PATH", help="TFLite's benchmark_model for the "
                       "phone's ABI (default: ~/.cache/nasctl/benchmark_model/<abi>/benchmark_model; "
                       "docs/android.md)")


def add_timing_flags(g) -> None:
    """How long one latency measurement runs, as profile and bench take it; the defaults are
    :class:`~nasctl.profiling.backends.ProfileSettings`' own, so host and phone timings match."""
    from nasctl.profiling.backends import ProfileSettings

    d = ProfileSettings()
    g.add_argument("--threads", type=int, default=d.threads, help=f"inference threads (default {d.threads})")
    g.add_argument("--runs", type=int, default=d.runs,
                   help=f"timed inferences per measurement, at least (default {d.runs})")
    g.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"untimed warm-up inferences (default {d.warmup})")
    g.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help=f"keep timing until this long has passed (default {d.min_seconds:g})")


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
