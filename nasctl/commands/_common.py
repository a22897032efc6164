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


def add_epoch_selection_flags(g, prefix: str = "") -> None:
    """Which fine-tuning epoch is kept (:class:`nasctl.nas.training.subnet.EpochSelection`): ``--select``,
    ``--select-every``, ``--patience`` for ``nasctl finetune``; ``prefix="finetune-"`` gives the search's
    fine-tune stage the same flags as ``--finetune-select`` and so on."""
    g.add_argument(f"--{prefix}select", choices=("best", "last"),
                   help="which epoch to keep: the best by PGD accuracy on the validation split (the "
                   "search's attack), or the last (default best)")
    g.add_argument(f"--{prefix}select-every", type=int, metavar="N",
                   help="score the validation split every N fine-tuning epochs (default 4)")
    g.add_argument(f"--{prefix}patience", type=int, metavar="EPOCHS",
                   help="stop fine-tuning after EPOCHS epochs without a better validation PGD accuracy, "
                   "counted from the schedule's second half at the earliest (default 12; 0: never stop "
                   "early)")


AA_SCOPES = ("up-to-knee", "all")  # nasctl.nas.search.AA_SCOPES (not imported: CLI start-up time)


def add_tradeoff_flags(g, prefix: str = "", many: bool = False) -> None:
    """The clean/robust trade-off of the recipe (:data:`nasctl.nas.training.TRADEOFFS`) and the AutoAttack
    run on the result: ``--tradeoff``/``--autoattack`` for ``nasctl finetune``, ``--finetune-tradeoff``/
    ``--finetune-autoattack`` (``many``: a comma list, one fine-tuned entry each) for the search."""
    g.add_argument(f"--{prefix}tradeoff", metavar="NAMES" if many else "NAME",
                   help="the recipe's point of the clean/robust trade-off: robust (the supernet's "
                   "trainer) or accurate (attack crafted in eval mode, plain momentum: more clean "
                   "accuracy, less PGD)"
                   + ("; a comma list fine-tunes each member once per entry, e.g. robust,accurate "
                      "(default robust)" if many else " (default robust)"))
    g.add_argument(f"--{prefix}autoattack", choices=("standard", "apgd", "off"),
                   help="AutoAttack on the test images after training, recorded beside PGD: standard "
                   "(APGD-CE, APGD-T, FAB-T, Square), apgd (APGD-CE + APGD-T; default) or off")
    if many:
        g.add_argument(f"--{prefix}autoattack-scope", choices=AA_SCOPES,
                       help="which fine-tuned members AutoAttack scores: up-to-knee (the knee, what "
                       "nasctl export ships by default, and every member no larger: the sizes that "
                       "compete with hand-designed nets; default) or all (the large members cost the most)")


def add_device_flag(g) -> None:
    """``--device`` and ``--threads`` of the commands that train or attack with torch (not profile's
    host | adb:SERIAL, whose ``--threads`` are the timed model's)."""
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    add_threads_flag(g)


def add_threads_flag(g) -> None:
    """``--threads`` for torch's own work (read by the CLI, see :mod:`nasctl.threads`)."""
    g.add_argument("--threads", dest="torch_threads", type=int, metavar="N",
                   help="CPU threads for torch (default: OMP_NUM_THREADS, else the cores this process may "
                   "use; recorded in config.json). Jobs side by side on the same cores: 1 each")


def add_phone_flags(g, benchmark_binary: bool = True) -> None:
    """``--adb`` (and ``--benchmark-binary``): the tools that reach a phone, as devices, bench and profile
    take them."""
    g.add_argument("--adb", metavar="PATH", help="adb executable (default: adb on PATH)")
    if benchmark_binary:
        g.add_argument("--benchmark-binary", metavar="PATH", help="TFLite's benchmark_model for the "
                       "phone's ABI (default: ~/.cache/nasctl/benchmark_model/<abi>/benchmark_model; "
                       "docs/android.md)")


def add_dataset_flags(g, dataset_help: str = "default digits, embedded") -> None:
    """``--dataset`` / ``--data-dir`` and the options of a user's own images, as train, search and the
    width study take them (:func:`dataset_from_args` folds the options into the name)."""
    from nasctl.nas.data import dataset_names

    g.add_argument("--dataset", metavar="NAME", help=f"{', '.join(dataset_names())} ({dataset_help}), or "
                   "your own images: folder:DIR (DIR/<class>/* or DIR/train|val|test/<class>/*) or "
                   "npz:FILE (x_train, y_train, x_test, y_test)")
    g.add_argument("--data-dir", help="folder of a torchvision data set (downloaded there when online)")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="folder:DIR: resize every image to N x N (default: their own size, when all equal)")
    g.add_argument("--channels", type=int, choices=(1, 3),
                   help="folder:DIR: 1 (gray) or 3 (RGB) channels (default: what the images are)")
    g.add_argument("--test-fraction", type=float, metavar="F",
                   help="folder:DIR without test/: share of each class held out as test (default 0.2)")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="folder:DIR: skip (and count) images that cannot be decoded instead of stopping")


def dataset_from_args(args: argparse.Namespace) -> None:
    """Fold ``--image-size``, ``--channels``, ``--test-fraction`` and ``--skip-bad-images`` into
    ``args.dataset`` (``folder:/abs/DIR?image_size=32``): the name is what every config and checkpoint
    stores, so later stages reload exactly the same images."""
    from nasctl.errors import NasctlError
    from nasctl.nas.data import dataset_spec

    opts = {k: getattr(args, k, None) for k in ("image_size", "channels", "test_fraction", "skip_bad_images")}
    if getattr(args, "dataset", None) is None:
        given = [f"--{k.replace('_', '-')}" for k, v in opts.items() if v is not None]
        if given:
            raise NasctlError(f"{', '.join(given)} apply to --dataset folder:DIR: add --dataset")
        return
    args.dataset = dataset_spec(args.dataset, opts["image_size"], opts["channels"], opts["test_fraction"],
                                bool(opts["skip_bad_images"]))
    decode_with_progress(args.dataset)


def decode_with_progress(dataset: str) -> None:
    """Decode (or find in the cache) a user's image folder now, with a progress display, so that a bad
    folder fails before any run folder exists and later loads come from the cache."""
    from nasctl.nas.data import dataset_info
    from nasctl.nas.data.userdata import is_user_spec

    if not is_user_spec(dataset):
        return
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "decoding", "img", lines=10)
        bar.update(done - bar.n)

    try:
        dataset_info(dataset, progress)
    finally:
        if bar is not None:
            bar.close()


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


def timing_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_timing_flags` as the keywords ``ProfileSettings`` and ``BenchOptions`` share,
    so profile and bench hand a measurement the same four numbers."""
    return {name: getattr(args, name) for name in ("threads", "runs", "warmup", "min_seconds")}


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


class LineProgress:
    """A tqdm stand-in for output that is not a terminal (a log file, CI, ``nohup``, a cluster job).

    A bar redrawn with ``\\r`` turns a log into hundreds of frames per epoch; this prints plain lines
    instead: one per :meth:`update` (``lines=None``), or at most about ``lines`` over the whole bar, with
    the same text a bar shows (count, total, postfix). Only the methods nasctl calls are provided.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", lines: int | None = None,
                 file=None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self._file = file or sys.stderr
        self._every = max(1, -(-total // lines)) if (lines and total) else 1
        self._printed_at = 0

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._printed_at >= self._every or (self.total is not None and self.n >= self.total):
            self._printed_at = self.n
            count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
            tail = f"  {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {count} {self.unit}{tail}", file=self._file, flush=True)

    def close(self) -> None:
        pass


class _NoProgress(LineProgress):
    """Off a terminal, the per-batch bars print nothing: the epoch's own line says it all."""

    def update(self, n: int = 1) -> None:
        self.n += n


def on_terminal() -> bool:
    """Whether progress may be drawn as bars: stderr is a terminal (``NASCTL_PROGRESS=lines`` forces lines,
    ``=bars`` bars)."""
    import os

    forced = os.environ.get("NASCTL_PROGRESS", "").lower()
    if forced in ("lines", "bars"):
        return forced == "bars"
    return sys.stderr.isatty()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True,
                 lines: int | None = None, per_update: bool = True):
    """The one place nasctl makes a progress display: a tqdm bar on a terminal; otherwise plain lines
    (:class:`LineProgress`, at most ``lines`` of them), or nothing when ``per_update`` is false (bars
    whose steps another line already summarises, like the batches of an epoch)."""
    if on_terminal():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, dynamic_ncols=True)
    if not per_update:
        return _NoProgress(total, desc, unit)
    return LineProgress(total, desc, unit, lines)


def epoch_progress():
    """A TrainCallbacks object that draws one bar per epoch on stderr (on a terminal) and prints one
    line per epoch."""
    from nasctl.nas.training.supernet import TrainCallbacks

    class _Bars(TrainCallbacks):
        bar = None

        def on_epoch_start(self, epoch, epochs, n_batches):
            self.bar = progress_bar(n_batches, f"epoch {epoch}/{epochs}", "batch", leave=False,
                                    per_update=False)

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
