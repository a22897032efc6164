"""PyTorch modules -> ONNX -> TFLite float32 / int8 for timing, many in one process.

The same chain as ``nasctl export`` (BatchNorm folded, :func:`export_onnx`, onnx2tf, then
``TFLiteConverter`` full-int8), so a single-layer model of the lookup table and a whole subnet are
converted alike. Two differences, both for speed and neither changing the graph: onnxsim runs in this process
instead of as the separate ``onnxsim`` command onnx2tf starts (6 s per model), and calibration
uses random inputs (latency does not depend on the values). With the
converter loaded once, a model takes about 0.2 s (float) + 0.35 s (int8) instead of 7 s.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

PRECISIONS = ("float32", "int8")
CALIBRATION_IMAGES = 8


@dataclass(frozen=True)
class ToConvert:
    name: str  # file stem in the output folder
    build: Callable[[], nn.Module]  # a fresh module (eval mode is set here)
    input_shape: tuple[int, int, int, int]  # [1, C, H, W]


def _simplify(path: Path) -> None:
    """onnxsim in this process, as onnx2tf would run it as a command: the same graph reaches the
    converter (some blocks, e.g. a residual ghost block whose channels equal its height and width,
    convert only after it), without a 6 s process per model."""
    import onnx
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(path)))
    if ok:
        onnx.save(model, str(path))


def convert_modules(
    items: Iterable[ToConvert],
    out_dir: str | Path,
    precision: str,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Convert each module to ``out_dir/<name>.tflite`` at ``precision``; name -> file."""
    from nasctl.export.onnx import export_onnx
    from nasctl.export.prepare import fold_batchnorm
    from nasctl.export.tflite import TFLiteConversion

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    done: dict[str, Path] = {}
    scratch = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir))
    try:
        for item in items:
            with torch.random.fork_rng(devices=[]):  # the same weights every time; the caller's RNG untouched
                torch.manual_seed(0)
                model = item.build().eval()
                x = torch.rand(*item.input_shape)
            folded, _ = fold_batchnorm(model, x)
            onnx_path = scratch / f"{item.name}.onnx"
            export_onnx(folded, x, onnx_path)
            _simplify(onnx_path)
            out = out_dir / f"{item.name}.tflite"
            with TFLiteConversion(
                onnx_path, scratch / "onnx2tf.log", simplify=False, verbosity="error"
            ) as conv:
                if precision == "float32":
                    conv.float32(out)
                else:
                    conv.float32(scratch / "float.tflite")
                    _, c, h, w = item.input_shape
                    conv.int8(rng.random((CALIBRATION_IMAGES, h, w, c), dtype=np.float32), out)
            onnx_path.unlink(missing_ok=True)
            done[item.name] = out
            if progress is not None:
                progress(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done
