"""``nasctl devices``: the Android phones adb sees, with their state and fingerprint."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import add_phone_flags, command_parser


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(
        sub, name, help_text, "A phone is ready when its state is 'device'; the fingerprint (model, "
        "SoC/board, ABI, Android version, cores) keys its measurements and lookup tables. Set-up: "
        "docs/android.md."
    )
    add_phone_flags(p, benchmark_binary=False)
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasctl.android_bench.adb import Adb
    from nasctl.android_bench.device import list_devices

    devices = list_devices(Adb(args.adb))
    if args.json:
        print(json.dumps([d.to_dict() for d in devices]))
        return 0
    if not devices:
        print(
            "no Android phones attached: plug one in with USB debugging on (or adb connect HOST:PORT) "
            "and accept its prompt; see docs/android.md",
            file=sys.stderr,
        )
        return 0
    header = ("SERIAL", "STATE", "MODEL", "BOARD", "ABI", "OS", "CORES", "FINGERPRINT")
    rows = []
    for d in devices:
        i = d.info
        rows.append(
            (d.serial, d.state, i.model, i.board, i.abi, i.os, str(i.cores), i.fingerprint)
            if i
            else (d.serial, d.state, d.attrs.get("model", "-"), "-", "-", "-", "-", "-")
        )
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for d in devices:
        if d.error:
            print(f"  {d.serial}: {d.error}", file=sys.stderr)
    return 0
