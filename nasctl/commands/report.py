"""``nasctl report RUN``: a search run, what was done with it, and its provenance, on one page."""

from __future__ import annotations

import argparse
import sys

from ._common import command_parser


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(
        sub, name, help_text, "It holds the config, the front (inherited and fine-tuned numbers), its "
        "plots, layer statistics, the experiments and exports made from it (found under the run root), "
        "latency and provenance. Images are embedded, so the HTML file can be mailed; the Markdown beside "
        "it has the same content."
    )
    p.add_argument("run", metavar="RUN", help="search run folder (runs/search/<stamp>)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="HTML file to write, ending in .html, or a folder (default RUN/report.html); the .md goes "
        "beside it. Only ever replaces pages an earlier 'nasctl report' wrote",
    )
    p.add_argument(
        "--run-root",
        help="where to look for experiments and exports (default: the folder above RUN's search/)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.nas.report import write_report

    html_path, md_path = write_report(args.run, args.out, args.run_root, warn=_warn)
    print(f"written: {html_path}\n         {md_path}")
    return 0


def _warn(line: str) -> None:
    """What the page notes (a missing plot) as a line on stderr, whatever logging is set to."""
    print(f"nasctl: warning: {line}", file=sys.stderr)
