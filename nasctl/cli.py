"""The ``nasctl`` command line: parse arguments, call library functions, print one-line errors.

Each subcommand lives in ``nasctl/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; modules are imported lazily so ``nasctl --help`` stays fast (no torch import
for the help text, no tensorflow ever, unless exporting).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__, threads

# command name -> (module, one-line help). Modules are imported only for the chosen command.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("nasctl.commands.train", "adversarially train a weight-sharing supernet"),
    "search": ("nasctl.commands.search", "NSGA-II search for the Pareto front of robust tiny subnets"),
    "eval": ("nasctl.commands.eval",
             "strong robustness evaluation of chosen subnets (PGD with restarts, ART's PGD, Square; "
             "AutoAttack when installed)"),
    "finetune": ("nasctl.commands.finetune",
                 "adversarially fine-tune (or train from scratch) a chosen subnet of a search run"),
    "export": ("nasctl.commands.export", "export a subnet to verified ONNX / TFLite float32 / int8"),
    "profile": ("nasctl.commands.profile",
                "latency of a model file, a device's lookup table, or a genome's predicted latency"),
    "devices": ("nasctl.commands.devices", "list the Android phones adb sees, with their fingerprint"),
    "bench": ("nasctl.commands.bench", "benchmark .tflite models on Android phones (TFLite benchmark_model)"),
    "experiment": ("nasctl.commands.experiment",
                   "TAM-NAS's studies on a search run: transfer, width, finetune-vs-scratch"),
    "report": ("nasctl.commands.report", "one self-contained HTML (and Markdown) page of a search run"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasctl", description="Find tiny networks that stay accurate under adversarial attack, "
        "and ship them to phones (TAM-NAS).")
    parser.add_argument("--version", action="version", version=f"nasctl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    if chosen not in TORCH_COMMANDS:
        return _main(argv)
    with threads.sharing_cores() as others:  # registered as a running job while it runs
        threads.prepare_openmp(others > 0 or threads.machine_busy())  # before anything imports torch
        return _main(argv)


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s")
    from nasctl.errors import NasctlError, RunInterrupted

    try:
        if args.command in TORCH_COMMANDS:
            _set_threads(getattr(args, "torch_threads", None))
        return int(args.func(args) or 0)
    except NasctlError as e:  # bad input: 2; a run that could not finish (a dead worker): its exit_code
        _close_progress_bars()
        print(f"nasctl: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except OSError as e:  # the environment, not a bug: a full disk, a read-only folder, a file as a folder
        _close_progress_bars()
        print(f"nasctl: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        _close_progress_bars()
        hint = interrupt_hint(args, e.run_dir if isinstance(e, RunInterrupted) else None)
        print(f"nasctl: interrupted; everything finished so far is on disk{hint}", file=sys.stderr)
        return 130


def interrupt_hint(args: argparse.Namespace, run_dir: object) -> str:
    """The tail of the Ctrl-C line: the exact command that continues the run, when there is one.

    ``run_dir``: the folder the interrupted run was writing (None: Ctrl-C came before it made one).
    ``train``, ``search`` and the studies continue with ``--resume`` on that folder; ``finetune`` has no
    resume, so its hint says to start it again; other commands get none.
    """
    import shlex
    from pathlib import Path

    resumable = {"train": "nasctl train", "search": "nasctl search",
                 "experiment": f"nasctl experiment {getattr(args, 'study', '')}"}
    command = resumable.get(args.command)
    folder = run_dir if run_dir is not None else getattr(args, "resume", None)
    if command and folder is not None:
        if Path(str(folder), "config.json").is_file() or Path(str(folder), "checkpoint.pt").is_file():
            return f" (continue with: {command} --resume {shlex.quote(str(folder))})"  # pasteable as is
        return f" (nothing was recorded in {folder} yet: run the same command again)"
    if args.command == "eval" and run_dir is not None:
        done = shlex.quote(str(Path(str(run_dir), "eval.json")))
        return (f" (the subnets evaluated before it are in {done}"
                f", status 'interrupted'; run the same command again for the rest)")
    if command or args.command == "finetune":
        where = f"partial results in {run_dir}; " if run_dir is not None else "no run folder was made yet; "
        return f" ({where}run the same command again to start it over)"
    return ""


# commands whose own process trains or attacks with torch: they get nasctl's thread rules
TORCH_COMMANDS = ("train", "search", "finetune", "eval", "experiment")


def _set_threads(requested: int | None) -> None:
    from nasctl.errors import NasctlError

    try:
        choice = threads.choose_threads(requested)
    except ValueError as e:
        raise NasctlError(f"{e}: give a positive thread count") from None
    threads.apply_threads(choice)


def _close_progress_bars() -> None:
    """Close the bars a failed command left open, so the error line starts on a line of its own."""
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is not None:
        for bar in list(getattr(tqdm_mod.tqdm, "_instances", ())):
            bar.close()


def os_error_line(e: OSError) -> str:
    """One line for a failed read or write: what, where, and what to do about it."""
    import errno

    where = f" {e.filename!r}" if e.filename else ""
    fixes = {errno.ENOSPC: "free some disk space (or choose another --run-root / --out)",
             errno.EDQUOT: "free some disk space (or choose another --run-root / --out)",
             errno.EACCES: "check the folder's permissions (or choose another --run-root / --out)",
             errno.EPERM: "check the folder's permissions (or choose another --run-root / --out)",
             errno.EROFS: "the file system is read-only: choose another --run-root / --out",
             errno.ENOTDIR: "a path component is a file, not a folder: choose another --run-root / --out",
             errno.EEXIST: "choose another --run-root / --out"}
    fix = fixes.get(e.errno, "check the path, then run the command again")
    return (f"cannot write or read{where}: {e.strerror or e}; {fix}. Everything finished before this "
            f"is on disk (resume with --resume where the command has it)")


if __name__ == "__main__":
    sys.exit(main())
