"""``nasctl export``: a searched subnet to verified ONNX / TFLite float32 / int8 files.

Thin: parses flags into :class:`nasctl.export.ExportConfig`, calls :func:`nasctl.export.export`
and prints one line per step (time, file, size, check). Exit status: 0 when every check passed,
1 when files were written but a check failed (e.g. the int8 accuracy gate), 2 on bad input or a
converter failure (``nasctl: error: ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import add_config_flags, add_run_flags, command_parser, config_overrides

EPILOG = """examples:
  nasctl export --run runs/search/20250101-120000-digits --target tflite --int8
  nasctl export --run RUN --pick 3 --target onnx
  nasctl export --checkpoint runs/train/X/supernet.pt --arch ir_k3_e3_c8-skip-... --target tflite --int8
writes model.onnx, model_float32.tflite, model_int8.tflite, metadata.json, report.json (and onnx2tf.log)."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = command_parser(
        sub, name, help_text, "Every hop is checked numerically against the previous one; results go to "
        "report.json.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("what to export")
    add_run_flags(g)
    g.add_argument(
        "--checkpoint",
        "--supernet",
        metavar="CKPT",
        dest="checkpoint",
        help="supernet checkpoint, instead of a run (needs --arch)",
    )
    g.add_argument("--arch", metavar="GENOME", help="genome string to extract from --checkpoint")
    g = p.add_argument_group("output")
    g.add_argument("--target", metavar="TARGET", help="onnx or tflite (default tflite)")
    g.add_argument("--int8", action="store_true", default=None, help="also full-integer int8 TFLite")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/export/<stamp>-<name>)")
    g = p.add_argument_group("checks")
    g.add_argument(
        "--calib-size", type=int, help="int8 calibration images from the train split (default 300)"
    )
    g.add_argument(
        "--max-int8-drop",
        type=float,
        help="clean-accuracy points int8 may lose vs float before the export fails (default 2.0)",
    )
    g.add_argument(
        "--eps",
        type=float,
        help="robustness L-inf radius (default: the search's / training's, else the data set's, digits 0.1)",
    )
    g.add_argument(
        "--robust-images", type=int, help="test images attacked on the int8 model (default 200; 0 skips)"
    )
    g.add_argument(
        "--pgd-steps", type=int, help="PGD steps of the transfer and fake-quant attacks (default 20)"
    )
    g.add_argument("--square-queries", type=int, help="Square attack queries per image (default 300)")
    g.add_argument("--data-dir", help="data set folder (default: as recorded by the run / checkpoint)")
    g.add_argument(
        "--threads",
        type=int,
        help="torch threads for the PyTorch parts (default: torch's; 1 is "
        "fastest for tiny models on a busy CPU)",
    )
    add_config_flags(p)
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def _printer():
    from nasctl.export import ExportCallbacks

    class _Lines(ExportCallbacks):
        def on_start(self, out_dir, genome, plan, source):
            where = (
                f"run {source['run']} front #{source['front_index']}{' (knee)' if source.get('knee') else ''}"
                if "run" in source
                else f"checkpoint {source['checkpoint']}"
            )
            weights = ("fine-tuned weights (the subnet trained on its own)" if source.get("kind") == "subnet"
                       else "inherited supernet weights, BN recalibrated")
            print(f"exporting {genome}\n  from {where}\n  with {weights}: {source['checkpoint']}\n"
                  f"  to   {out_dir}", flush=True)

        def on_step_start(self, index, total, name):
            print(f"[{index}/{total}] {name:<15}", end="", flush=True)

        def on_step_end(self, index, total, record):
            file = f"{record.artifact} {_size(record.size_bytes)}" if record.artifact else ""
            if record.status != "failed":
                text = record.summary
            elif record.summary == "interrupted":
                text = "interrupted (files of the steps before this one are kept)"
            else:
                text = "FAILED (see the error below)"
            print(f"{record.seconds:6.1f} s  {file:<30} {text}", flush=True)

    return _Lines()


def run(args: argparse.Namespace) -> int:
    from nasctl.config import merge_config
    from nasctl.export import ExportConfig, export

    overrides = config_overrides(args, ExportConfig)
    cfg = merge_config(ExportConfig, args.config, overrides)
    result = export(cfg, callbacks=_printer())
    report = Path(result.out_dir) / "report.json"
    if result.ok:
        print(f"done in {result.report['total_seconds']:.1f} s: {report}")
        return 0
    checks = result.report["checks"]
    reasons = []
    for name in result.failed_checks:
        c = checks[name]
        if c["metric"] == "int8_acc_drop":
            reasons.append(
                f"int8 clean accuracy dropped {c['value']:.1f} points (> --max-int8-drop {c['threshold']:g})"
            )
        else:
            reasons.append(f"{name} max abs diff {c['value']:.1e} > {c['threshold']:g}")
    print(
        f"nasctl: error: export checks failed: {'; '.join(reasons)}; the files are written to "
        f"{result.out_dir} (details in {report})",
        file=sys.stderr,
    )
    return 1
