"""The export pipeline: resolve the model, run the target's steps in order, verify each hop, and
write ``metadata.json`` and ``report.json`` next to the artifacts.

Steps (names as in :mod:`targets`): ``prepare`` (extract, recalibrate BN, fold BN), ``onnx``,
``tflite_float32``, ``tflite_int8``, ``robustness``. Each is timed; its record (file, size, check)
is appended to ``report.json`` as soon as it finishes, so a failure later keeps the earlier
artifacts *and* their numbers. Checks that miss their threshold (ONNX / float TFLite max abs diff
> ``tolerance``, int8 accuracy drop > ``max_int8_drop``) do not stop the export: the files are
written and the result says which checks failed (the CLI then exits non-zero). A step that cannot
run (bad input, converter failure) raises :class:`NasctlError` after recording itself as failed.

Use::

    cfg = ExportConfig(checkpoint="runs/train/x/supernet.pt", arch="ir_k3_e3_c8-...", int8=True)
    result = export(cfg)              # or export(cfg, splits=my_splits, callbacks=...)
    result.ok, result.out_dir, result.report["checks"]
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nasctl.nas.checkpoint import atomic_write_json
from nasctl.nas.data import DataSplits, load_dataset
from nasctl.nas.errors import NasctlError

from .errors import ExportError
from .source import ExportSource, RunPick, latest_run, load_source, pick_from_run, sha256_file
from .targets import Target, get_target, require_installed
from .verify import Check, diff_check, int8_check, tflite_quantization_summary, torch_logits

log = logging.getLogger(__name__)

METADATA_FORMAT = "nasctl.export.v1"
REPORT_FORMAT = "nasctl.export-report.v1"
ONNX_FILE, FLOAT_FILE, INT8_FILE = "model.onnx", "model_float32.tflite", "model_int8.tflite"
CONVERTER_LOG = "onnx2tf.log"


@dataclass
class ExportConfig:
    """Settings of one export; defaults with their reasons."""

    run: str | None = None  # search run folder (or its pareto.json); None: the newest under run_root/search
    pick: str = "knee"  # knee | INDEX | GENOME of that run's front
    checkpoint: str | None = None  # supernet checkpoint to export from without a run (needs arch)
    arch: str | None = None  # genome string, with checkpoint
    target: str = "tflite"  # onnx | tflite (see targets.TARGETS); phones run TFLite
    int8: bool = False  # also full-integer int8 TFLite (+ deployed-robustness check)
    calib_size: int = 300  # int8 calibration images from the train split: a few hundred is TFLite's advice
    max_int8_drop: float = 2.0  # points of clean test accuracy int8 may lose against float
    tolerance: float = 1e-4  # max abs logit difference accepted for ONNX Runtime and float TFLite
    check_images: int = 256  # validation images for the float difference checks
    eps: float | None = None  # robustness L-inf radius; None: the data set's default (digits 0.1)
    robust_images: int = 200  # test images attacked in the robustness step; 0 skips it
    pgd_steps: int = 20  # PGD-20 for the transfer and fake-quant attacks
    square_queries: int = 300  # Square attack budget per image (official evaluation: 10,000)
    recalib_batches: int = 8  # BatchNorm recalibration: 8 batches of 64 training images
    recalib_batch_size: int = 64
    data_dir: str | None = None  # None: as recorded by the run / checkpoint
    seed: int | None = None  # None: the run's (or training's) seed, so splits match
    out: str | None = None  # output folder; None: <run_root>/export/<stamp>-<name>
    run_root: str = "runs"
    name: str = ""  # run folder suffix; default: the genome

    def validate(self) -> None:
        if self.checkpoint and not self.arch:
            raise ExportError("--checkpoint needs --arch GENOME (the subnet to export)")
        if self.arch and not self.checkpoint:
            raise ExportError("--arch needs --checkpoint CKPT; to choose from a search run use --run RUN --pick GENOME")
        if self.checkpoint and self.run:
            raise ExportError("give either --run RUN or --checkpoint CKPT --arch GENOME, not both")
        target = get_target(self.target)
        if self.int8 and not target.supports_int8:
            raise ExportError(f"--int8 is not supported for --target {self.target}: use --target "
                              f"{' or '.join(_int8_targets())}")
        for name in ("calib_size", "check_images", "recalib_batches", "recalib_batch_size"):
            if getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("robust_images", "pgd_steps", "square_queries"):
            if getattr(self, name) < 0:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_int8_drop < 0 or self.tolerance <= 0:
            raise ExportError("--max-int8-drop must be >= 0 and the tolerance > 0")
        if self.eps is not None and not 0 <= self.eps <= 1:
            raise ExportError(f"--eps is on [0, 1] pixels, got {self.eps}")


def _int8_targets() -> list[str]:
    from .targets import TARGETS

    return [t.name for t in TARGETS.values() if t.supports_int8]


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


class ExportCallbacks:
    """Hooks for progress display (the CLI prints step lines); library code only logs."""

    def on_start(self, out_dir: Path, genome: str, plan: tuple[str, ...], source: dict[str, Any]) -> None: ...
    def on_step_start(self, index: int, total: int, name: str) -> None: ...
    def on_step_end(self, index: int, total: int, record: StepRecord) -> None: ...


@dataclass
class ExportResult:
    out_dir: Path
    status: str  # ok | checks_failed
    failed_checks: list[str]
    steps: list[StepRecord]
    report: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Context:
    cfg: ExportConfig
    target: Target
    out_dir: Path
    source: ExportSource
    splits: DataSplits
    seed: int
    metadata: dict[str, Any]
    float_model: torch.nn.Module | None = None  # recalibrated, BN unfolded: the reference
    folded: torch.nn.Module | None = None
    x_check: np.ndarray | None = None
    onnx_logits: np.ndarray | None = None
    conversion: Any = None  # tflite.TFLiteConversion, open across the TFLite steps
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    calib: Any = None
    int8_runner: Any = None
    robustness: dict[str, Any] | None = None
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def chw(self) -> tuple[int, int, int]:
        info = self.splits.info
        return info.in_channels, info.resolution, info.resolution


# --- steps -----------------------------------------------------------------------------------------
def _step_prepare(ctx: _Context) -> StepRecord:
    from .prepare import fold_batchnorm, recalibrate

    src, cfg = ctx.source, ctx.cfg
    model = src.model.eval()
    seen = 0
    if src.needs_bn_recalibration:
        seen = recalibrate(model, ctx.splits.train, ctx.seed, cfg.recalib_batches, cfg.recalib_batch_size)
    ctx.float_model = model.eval()
    ctx.x_check = ctx.splits.val.subset(cfg.check_images).numpy_images()
    if len(ctx.x_check) == 0:
        ctx.x_check = ctx.splits.test.subset(cfg.check_images).numpy_images()
    ctx.folded, folds = fold_batchnorm(model, torch.from_numpy(ctx.x_check[:1]))
    check = diff_check("fold_batchnorm", torch_logits(model, ctx.x_check), torch_logits(ctx.folded, ctx.x_check),
                       "PyTorch model before folding", cfg.tolerance)
    ctx.checks["fold_batchnorm"] = check
    params = sum(p.numel() for p in model.parameters())
    info = {"params": int(params), "bn_recalibrated_on_images": int(seen), "bn_folded": folds,
            "bn_left": sum(isinstance(m, torch.nn.BatchNorm2d) for m in ctx.folded.modules())}
    recal = f"BN recalibrated on {seen} train images, " if seen else ""
    return StepRecord("prepare", 0.0, "ok" if check.passed else "check_failed",
                      f"{params:,} params, {recal}{folds} BN folded; fold {check.summary()}", check=check.to_dict(),
                      info=info)


def _step_onnx(ctx: _Context) -> StepRecord:
    from .onnx import export_onnx
    from .runtimes import OnnxRunner

    path = ctx.out_dir / ONNX_FILE
    c, h, w = ctx.chw
    info = export_onnx(ctx.folded, torch.zeros(1, c, h, w), path)
    ctx.onnx_logits = OnnxRunner(path).predict(ctx.x_check)
    check = diff_check("onnx", torch_logits(ctx.float_model, ctx.x_check), ctx.onnx_logits,
                       "PyTorch float model (onnxruntime)", ctx.cfg.tolerance)
    ctx.checks["onnx"] = check
    ctx.metadata["io"]["onnx"] = {
        "input": {"name": "input", "shape": [1, c, h, w], "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": [1, ctx.splits.info.num_classes], "dtype": "float32"}}
    ctx.metadata["onnx"] = {"opset": info["opset"], "exporter": info["exporter"]}
    return StepRecord("onnx", 0.0, "ok" if check.passed else "check_failed", f"ORT vs PyTorch {check.summary()}",
                      ONNX_FILE, path.stat().st_size, check.to_dict(), info)


def _open_conversion(ctx: _Context) -> Any:
    if ctx.conversion is None:
        from .tflite import TFLiteConversion

        ctx.conversion = ctx.stack.enter_context(TFLiteConversion(ctx.out_dir / ONNX_FILE, ctx.out_dir / CONVERTER_LOG))
    return ctx.conversion


def _tflite_runner(path: Path):
    from .errors import ConversionError
    from .runtimes import TFLiteRunner

    try:
        return TFLiteRunner(path)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConversionError(f"LiteRT cannot run {path.name} ({first}): the converter emitted ops outside the "
                              f"TFLite builtins (e.g. Flex ops); see {path.parent / CONVERTER_LOG}") from e


def _step_tflite_float32(ctx: _Context) -> StepRecord:
    path = ctx.out_dir / FLOAT_FILE
    info = _open_conversion(ctx).float32(path)
    runner = _tflite_runner(path)
    check = diff_check("tflite_float32", ctx.onnx_logits, runner.predict(ctx.x_check), "ONNX Runtime",
                       ctx.cfg.tolerance)
    ctx.checks["tflite_float32"] = check
    ctx.metadata["io"]["tflite_float32"] = runner.io_details(ctx.chw)
    return StepRecord("tflite_float32", 0.0, "ok" if check.passed else "check_failed",
                      f"vs ONNX {check.summary()}", FLOAT_FILE, path.stat().st_size, check.to_dict(), info)


def _step_tflite_int8(ctx: _Context) -> StepRecord:
    from .prepare import calibration_set

    path = ctx.out_dir / INT8_FILE
    ctx.calib = calibration_set(ctx.splits.train, ctx.cfg.calib_size, ctx.seed)
    info = _open_conversion(ctx).int8(ctx.calib.nhwc(), path)
    ctx.metadata["calibration"] = ctx.calib.to_dict()
    runner = ctx.int8_runner = _tflite_runner(path)
    float_runner = _tflite_runner(ctx.out_dir / FLOAT_FILE)
    test = ctx.splits.test
    x, y = test.numpy_images(), test.labels.numpy()
    check = int8_check(torch_logits(ctx.float_model, x), runner.predict(x), y, ctx.cfg.max_int8_drop,
                       float_tflite_logits=float_runner.predict(x))
    ctx.checks["tflite_int8"] = check
    info.update(tflite_quantization_summary(runner.interpreter))
    info["calibration"] = ctx.calib.to_dict()
    ctx.metadata["io"]["tflite_int8"] = runner.io_details(ctx.chw)
    return StepRecord("tflite_int8", 0.0, "ok" if check.passed else "check_failed", check.summary(), INT8_FILE,
                      path.stat().st_size, check.to_dict(), info)


def _step_robustness(ctx: _Context) -> StepRecord:
    from .fakequant import make_fake_quant_twin
    from .robustness import RobustnessConfig, deployed_robustness

    cfg = ctx.cfg
    if cfg.robust_images == 0:
        return StepRecord("robustness", 0.0, "ok", "skipped (--robust-images 0)")
    eps = cfg.eps if cfg.eps is not None else float(ctx.splits.info.default_eps)
    scale, zp = ctx.int8_runner.input_quant
    twin = make_fake_quant_twin(ctx.folded, ctx.calib.images, input_scale=scale, input_zero_point=zp)
    rcfg = RobustnessConfig(eps=eps, images=cfg.robust_images, pgd_steps=cfg.pgd_steps,
                            square_queries=cfg.square_queries, seed=ctx.seed)
    test = ctx.splits.test
    r = ctx.robustness = deployed_robustness(ctx.float_model, twin, ctx.int8_runner.predict, test.numpy_images(),
                                             test.labels.numpy(), rcfg)
    per = ", ".join(f"{k} {v['int8_robust_acc']:.1f}" for k, v in r["attacks"].items())
    summary = (f"int8 robust acc {r['int8_robust_acc_min']:.1f} % (worst: {r['worst_attack']}) vs float "
               f"{r['float_robust_acc_min']:.1f} %, eps {eps:g}, {r['images']} test images [{per}]")
    return StepRecord("robustness", 0.0, "ok", summary, info={"eps": eps})


STEPS: dict[str, Callable[[_Context], StepRecord]] = {
    "prepare": _step_prepare, "onnx": _step_onnx, "tflite_float32": _step_tflite_float32,
    "tflite_int8": _step_tflite_int8, "robustness": _step_robustness,
}


# --- orchestration ---------------------------------------------------------------------------------
def _resolve(cfg: ExportConfig) -> tuple[ExportSource, RunPick | None]:
    pick = None
    if cfg.checkpoint:
        checkpoint, arch = cfg.checkpoint, cfg.arch
    else:
        pick = pick_from_run(cfg.run or latest_run(cfg.run_root), cfg.pick)
        checkpoint, arch = pick.checkpoint, pick.genome
    return load_source(checkpoint, arch), pick


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _artifacts(out_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in (ONNX_FILE, FLOAT_FILE, INT8_FILE):
        p = out_dir / name
        if p.is_file():
            out[name] = {"size_bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _check_data(source: ExportSource, splits: DataSplits) -> None:
    info, want = splits.info, source.dataset
    got = (info.in_channels, info.resolution, info.num_classes)
    expected = (want.get("in_channels"), want.get("resolution"), want.get("num_classes"))
    if got != expected:
        raise ExportError(f"data set {info.name!r} has (channels, resolution, classes) {got} but checkpoint "
                          f"{source.checkpoint!r} was trained on {want.get('name')!r} {expected}: pass the "
                          f"matching data set")


def export(cfg: ExportConfig, splits: DataSplits | None = None,
           callbacks: ExportCallbacks | None = None) -> ExportResult:
    """Run the export described by ``cfg``; see the module docstring.

    ``splits`` overrides the data set the checkpoint names (tests, notebooks). Raises
    :class:`NasctlError` for bad input and converter failures (after writing ``report.json``).
    """
    from nasctl.nas.runs import make_run_dir, versions, write_run_config

    cb = callbacks or ExportCallbacks()
    cfg.validate()
    target = get_target(cfg.target)
    require_installed(target)
    source, pick = _resolve(cfg)
    train_cfg = source.train_config
    seed = int(_first(cfg.seed, pick.seed if pick else None, train_cfg.get("seed"), 0))
    data_dir = _first(cfg.data_dir, pick.data_dir if pick else None, train_cfg.get("data_dir"))
    if splits is None:
        splits = load_dataset(source.dataset["name"], data_dir, seed=seed, val_size=train_cfg.get("val_size"))
    _check_data(source, splits)

    if cfg.out:
        out_dir = Path(cfg.out)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir = make_run_dir(cfg.run_root, "export", cfg.name or source.genome[:80])
    provenance = {"kind": source.kind, "checkpoint": source.checkpoint, "checkpoint_sha256": source.checkpoint_sha256,
                  "epoch": source.epoch}
    if pick is not None:
        provenance.update({"run": pick.run_dir, "front_index": pick.index, "knee": pick.is_knee,
                           "front_entry": pick.entry})
    write_run_config(out_dir, "export", cfg, extra={"genome": source.genome, "source": provenance, "seed": seed})
    info = splits.info
    metadata: dict[str, Any] = {
        "format": METADATA_FORMAT, "genome": source.genome, "space": source.space.to_dict(),
        "dataset": info.to_dict(), "num_classes": info.num_classes, "seed": seed, "source": provenance,
        "checkpoint_sha256": source.checkpoint_sha256, "versions": versions(),
        "preprocessing": "none: float32 pixels in [0, 1]; (x - mean) / std happens inside the model",
        "io": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    plan = target.plan(cfg.int8)
    ctx = _Context(cfg, target, out_dir, source, splits, seed, metadata)
    resolved = dict(asdict(cfg), seed=seed, data_dir=data_dir,
                    eps=cfg.eps if cfg.eps is not None else float(info.default_eps))
    report: dict[str, Any] = {"format": REPORT_FORMAT, "status": "running", "genome": source.genome,
                              "target": target.name, "int8": cfg.int8, "plan": list(plan), "config": resolved,
                              "source": provenance, "steps": [], "checks": {}, "robustness": None,
                              "artifacts": {}, "failed_checks": [], "error": None}
    records: list[StepRecord] = []

    def write_report() -> None:
        report["steps"] = [r.to_dict() for r in records]
        report["checks"] = {k: c.to_dict() for k, c in ctx.checks.items()}
        report["robustness"] = ctx.robustness
        report["artifacts"] = _artifacts(out_dir)
        report["failed_checks"] = [k for k, c in ctx.checks.items() if not c.passed]
        atomic_write_json(out_dir / "report.json", report)
        atomic_write_json(out_dir / "metadata.json", metadata)

    write_report()
    cb.on_start(out_dir, source.genome, plan, provenance)
    t_start = time.perf_counter()
    with ctx.stack:
        for i, name in enumerate(plan, 1):
            cb.on_step_start(i, len(plan), name)
            t0 = time.perf_counter()
            try:
                record = STEPS[name](ctx)
            except (NasctlError, Exception) as e:
                msg = str(e) if isinstance(e, NasctlError) else f"{type(e).__name__}: {e}"
                records.append(StepRecord(name, time.perf_counter() - t0, "failed", msg))
                report["status"], report["error"] = "failed", msg
                report["total_seconds"] = time.perf_counter() - t_start
                write_report()
                cb.on_step_end(i, len(plan), records[-1])
                raise
            record.seconds = time.perf_counter() - t0
            records.append(record)
            log.debug("step %s: %.2f s, %s", name, record.seconds, record.summary)
            write_report()
            cb.on_step_end(i, len(plan), record)

    failed = [k for k, c in ctx.checks.items() if not c.passed]
    report["status"] = "checks_failed" if failed else "ok"
    report["total_seconds"] = time.perf_counter() - t_start
    if (out_dir / ONNX_FILE).is_file():
        from .onnx import stamp_metadata

        stamp_metadata(out_dir / ONNX_FILE, metadata)  # final: includes the int8 scales
    write_report()
    return ExportResult(out_dir, report["status"], failed, records, report, metadata)
