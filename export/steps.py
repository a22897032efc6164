"""The export steps, one function each, run by :mod:`pipeline` in the order a target plans them.

Each step takes the shared :class:`ExportContext`, writes at most one artifact, checks it against
the previous hop and returns a :class:`StepRecord`; a step that cannot run raises
:class:`NasctlError`. :data:`STEPS` maps the names used in :mod:`targets` to the functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasctl.nas.data import DataSplits

from .source import ExportSource
from .targets import Target
from .verify import Check, diff_check, int8_check, tflite_quantization_summary, torch_logits

ONNX_FILE, FLOAT_FILE, INT8_FILE = "model.onnx", "model_float32.tflite", "model_int8.tflite"
CONVERTER_LOG = "onnx2tf.log"


@dataclass
class StepRecord:
    """What one step did: for the terminal, for ``report.json`` and for callers."""

    name: str
    seconds: float
    status: str  # ok | check_failed | failed
    summary: str  # one line for the terminal
    artifact: str | None = None  # file name inside the output folder
    size_bytes: int | None = None
    check: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked(name: str, check: Check, summary: str, path: Path | None = None,
             info: dict[str, Any] | None = None) -> StepRecord:
    """The record of a step judged by a numeric check (the pipeline fills in the seconds)."""
    return StepRecord(name, 0.0, "ok" if check.passed else "check_failed", summary,
                      path.name if path is not None else None,
                      path.stat().st_size if path is not None else None,
                      check.to_dict(), info if info is not None else {})


@dataclass
class ExportContext:
    """What the steps share: settings, model, data, and what earlier steps produced."""

    cfg: Any  # pipeline.ExportConfig
    target: Target
    out_dir: Path
    source: ExportSource
    splits: DataSplits
    seed: int  # the export's own random choices (recalibration batches, calibration set, attacks)
    eps: float  # robustness radius
    metadata: dict[str, Any]
    bn_calibration: Any = None  # nasctl.nas.supernet.BNCalibration for inherited weights
    float_model: torch.nn.Module | None = None  # recalibrated, BN unfolded: the reference
    folded: torch.nn.Module | None = None
    x_check: np.ndarray | None = None
    onnx_logits: np.ndarray | None = None
    conversion: Any = None  # tflite.TFLiteConversion, open across the TFLite steps
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    calib: Any = None
    int8_runner: Any = None
    robustness: dict[str, Any] | None = None
    final_dir: Path | None = None  # where the files land when the export is complete (out_dir: staging)
    previous: set[str] = field(default_factory=set)  # files an earlier export into final_dir wrote
    checks: dict[str, Check] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def chw(self) -> tuple[int, int, int]:
        info = self.splits.info
        return info.in_channels, info.resolution, info.resolution


# --- steps -----------------------------------------------------------------------------------------
def _step_prepare(ctx: ExportContext) -> StepRecord:
    from nasctl.nas.supernet import prepare_subnet

    from .prepare import fold_batchnorm

    src, cfg = ctx.source, ctx.cfg
    model = src.model.eval()
    seen = 0
    if src.needs_bn_recalibration:
        prepare_subnet(model, ctx.splits.train, ctx.bn_calibration)  # the search's own setting and images
        seen = ctx.bn_calibration.image_count(ctx.splits.train)
    ctx.float_model = model.eval()
    ctx.x_check = ctx.splits.val.subset(cfg.check_images).numpy_images()
    if len(ctx.x_check) == 0:
        ctx.x_check = ctx.splits.test.subset(cfg.check_images).numpy_images()
    ctx.folded, folds = fold_batchnorm(model, torch.from_numpy(ctx.x_check[:1]))
    check = diff_check(
        "fold_batchnorm",
        torch_logits(model, ctx.x_check),
        torch_logits(ctx.folded, ctx.x_check),
        "PyTorch model before folding",
        cfg.tolerance,
    )
    ctx.checks["fold_batchnorm"] = check
    params = sum(p.numel() for p in model.parameters())
    info = {
        "params": int(params),
        "bn_recalibrated_on_images": int(seen),
        "bn_folded": folds,
        "bn_left": sum(isinstance(m, torch.nn.BatchNorm2d) for m in ctx.folded.modules()),
    }
    recal = f"BN recalibrated on {seen} train images, " if seen else ""
    return _checked("prepare", check, f"{params:,} params, {recal}{folds} BN folded; fold {check.summary()}",
                    info=info)


def _step_onnx(ctx: ExportContext) -> StepRecord:
    from .onnx import export_onnx, stamp_metadata
    from .runtimes import OnnxRunner

    path = ctx.out_dir / ONNX_FILE
    c, h, w = ctx.chw
    info = export_onnx(ctx.folded, torch.zeros(1, c, h, w), path)
    ctx.onnx_logits = OnnxRunner(path).predict(ctx.x_check)
    check = diff_check(
        "onnx",
        torch_logits(ctx.float_model, ctx.x_check),
        ctx.onnx_logits,
        "PyTorch float model (onnxruntime)",
        ctx.cfg.tolerance,
    )
    ctx.checks["onnx"] = check
    ctx.metadata["io"]["onnx"] = {
        "input": {
            "name": "input",
            "shape": [1, c, h, w],
            "layout": "NCHW",
            "dtype": "float32",
            "range": [0.0, 1.0],
        },
        "output": {"name": "logits", "shape": [1, ctx.splits.info.num_classes], "dtype": "float32"},
    }
    ctx.metadata["onnx"] = {"opset": info["opset"], "exporter": info["exporter"]}
    stamp_metadata(path, ctx.metadata)  # again at the end, with the int8 scales
    return _checked("onnx", check, f"ORT vs PyTorch {check.summary()}", path, info)


def _open_conversion(ctx: ExportContext) -> Any:
    if ctx.conversion is None:
        from .tflite import TFLiteConversion

        ctx.conversion = ctx.stack.enter_context(
            TFLiteConversion(ctx.out_dir / ONNX_FILE, ctx.out_dir / CONVERTER_LOG)
        )
    return ctx.conversion


def _tflite_runner(path: Path):
    from .errors import ConversionError
    from .runtimes import TFLiteRunner

    try:
        return TFLiteRunner(path)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"LiteRT cannot run {path.name} ({first}): the converter emitted ops outside the "
            f"TFLite builtins (e.g. Flex ops); see {path.parent / CONVERTER_LOG}"
        ) from e


def _step_tflite_float32(ctx: ExportContext) -> StepRecord:
    path = ctx.out_dir / FLOAT_FILE
    info = _open_conversion(ctx).float32(path)
    runner = _tflite_runner(path)
    check = diff_check(
        "tflite_float32", ctx.onnx_logits, runner.predict(ctx.x_check), "ONNX Runtime", ctx.cfg.tolerance
    )
    ctx.checks["tflite_float32"] = check
    ctx.metadata["io"]["tflite_float32"] = runner.io_details(ctx.chw)
    return _checked("tflite_float32", check, f"vs ONNX {check.summary()}", path, info)


def _step_tflite_int8(ctx: ExportContext) -> StepRecord:
    from .prepare import calibration_set

    path = ctx.out_dir / INT8_FILE
    ctx.calib = calibration_set(ctx.splits.train, ctx.cfg.calib_size, ctx.seed)
    info = _open_conversion(ctx).int8(ctx.calib.nhwc(), path)
    ctx.metadata["calibration"] = ctx.calib.to_dict()
    runner = ctx.int8_runner = _tflite_runner(path)
    float_runner = _tflite_runner(ctx.out_dir / FLOAT_FILE)
    test = ctx.splits.test
    x, y = test.numpy_images(), test.labels.numpy()
    check = int8_check(
        torch_logits(ctx.float_model, x),
        runner.predict(x),
        y,
        ctx.cfg.max_int8_drop,
        float_tflite_logits=float_runner.predict(x),
    )
    ctx.checks["tflite_int8"] = check
    info.update(tflite_quantization_summary(runner.interpreter))
    info["calibration"] = ctx.calib.to_dict()
    ctx.metadata["io"]["tflite_int8"] = runner.io_details(ctx.chw)
    return _checked("tflite_int8", check, check.summary(), path, info)


def _step_robustness(ctx: ExportContext) -> StepRecord:
    from .fakequant import make_fake_quant_twin
    from .robustness import RobustnessConfig, deployed_robustness

    cfg = ctx.cfg
    if cfg.robust_images == 0:
        return StepRecord("robustness", 0.0, "ok", "skipped (--robust-images 0)")
    eps = ctx.eps
    scale, zp = ctx.int8_runner.input_quant
    twin = make_fake_quant_twin(ctx.folded, ctx.calib.images, input_scale=scale, input_zero_point=zp)
    rcfg = RobustnessConfig(
        eps=eps,
        images=cfg.robust_images,
        pgd_steps=cfg.pgd_steps,
        square_queries=cfg.square_queries,
        seed=ctx.seed,
    )
    test = ctx.splits.test
    r = ctx.robustness = deployed_robustness(
        ctx.float_model, twin, ctx.int8_runner.predict, test.numpy_images(), test.labels.numpy(), rcfg
    )
    per = ", ".join(f"{k} {v['int8_robust_acc']:.1f}" for k, v in r["attacks"].items())
    summary = (
        f"int8 robust acc {r['int8_robust_acc_min']:.1f} % (worst: {r['worst_attack']}) vs float "
        f"{r['float_robust_acc_min']:.1f} %, eps {eps:g}, {r['images']} test images [{per}]"
    )
    return StepRecord("robustness", 0.0, "ok", summary, info={"eps": eps})


STEPS: dict[str, Callable[[ExportContext], StepRecord]] = {
    "prepare": _step_prepare,
    "onnx": _step_onnx,
    "tflite_float32": _step_tflite_float32,
    "tflite_int8": _step_tflite_int8,
    "robustness": _step_robustness,
}
