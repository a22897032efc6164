"""The export pipeline: resolve the model, run the target's steps in order, verify each hop, and
write ``metadata.json`` and ``report.json`` next to the artifacts.

Steps (names as in :mod:`targets`, functions in :mod:`steps`): ``prepare`` (extract, recalibrate
BN, fold BN), ``onnx``, ``tflite_float32``, ``tflite_int8``, ``robustness``. Each is timed; its
record (file, size, check) goes into ``report.json`` as soon as it finishes, so a failure later
keeps the earlier artifacts *and* their numbers. Checks that miss their threshold (ONNX / float
TFLite max abs diff > ``tolerance``, int8 accuracy drop > ``max_int8_drop``) do not stop the
export: the files are written and the result says which checks failed (the CLI then exits 1).
A step that cannot run (bad input, converter failure) raises :class:`NasctlError` after recording
itself as failed.

Use::

    cfg = ExportConfig(checkpoint="runs/train/x/supernet.pt", arch="ir_k3_e3_c8-...", int8=True)
    result = export(cfg)              # or export(cfg, splits=my_splits, callbacks=...)
    result.ok, result.out_dir, result.report["checks"]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nasctl.core import atomic_write_json, atomic_write_text
from nasctl.errors import NasctlError
from nasctl.nas.data import DatasetInfo, DataSplits, load_dataset
from nasctl.runfolder import RunFolder

from .errors import ExportError
from .source import ExportSource, RunPick, latest_run, load_source, pick_from_run, sha256_file
from .steps import CONVERTER_LOG, FLOAT_FILE, INT8_FILE, ONNX_FILE, STEPS, ExportContext, StepRecord
from .targets import get_target, require_installed

__all__ = [
    "CONVERTER_LOG",
    "FLOAT_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "STEPS",
    "ExportCallbacks",
    "ExportConfig",
    "ExportResult",
    "StepRecord",
    "export",
]

log = logging.getLogger(__name__)

METADATA_FORMAT = "nasctl.export.v1"
REPORT_FORMAT = "nasctl.export-report.v1"
LABELS_FILE = "labels.txt"  # one class name a line, in output-index order (TFLite's label-file convention)
OWN_FILES = (ONNX_FILE, FLOAT_FILE, INT8_FILE, CONVERTER_LOG, LABELS_FILE, "metadata.json", "report.json",
             "config.json")


@dataclass
class ExportConfig(RunFolder):
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
    eps: float | None = None  # robustness L-inf radius; None: the search's / training's, else the data set's
    # default (digits 0.1)
    robust_images: int = 200  # test images attacked in the robustness step; 0 skips it
    pgd_steps: int = 20  # PGD-20 for the transfer and fake-quant attacks
    square_queries: int = 300  # Square attack budget per image (official evaluation: 10,000)
    # BatchNorm recalibration of inherited weights; None: the run's own setting (pareto.json
    # 'bn_calibration'), so the exported statistics are those the front was scored with; else 4 x 64
    recalib_batches: int | None = None
    recalib_batch_size: int = 64
    data_dir: str | None = None  # None: as recorded by the run / checkpoint
    seed: int | None = (
        None  # export randomness; None: the run's (or training's). Splits always use training's
    )
    threads: int | None = None  # torch threads for the PyTorch parts while exporting; None: torch's setting.
    # Tiny models run as fast on 1 thread, and much faster on a CPU shared with other jobs.
    out: str | None = None  # output folder; None: <run_root>/export/<stamp>-<name>

    def validate(self) -> None:
        if self.arch and not self.checkpoint:
            raise ExportError(
                "--arch needs --checkpoint CKPT; to choose from a search run use --run RUN --pick GENOME"
            )
        if self.checkpoint and self.run:
            raise ExportError("give either --run RUN or --checkpoint CKPT --arch GENOME, not both")
        target = get_target(self.target)
        if self.int8 and not target.supports_int8:
            raise ExportError(
                f"--int8 is not supported for --target {self.target}: use --target "
                f"{' or '.join(_int8_targets())}"
            )
        for name in ("calib_size", "check_images", "recalib_batches", "recalib_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"--threads must be >= 1, got {self.threads}")
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


# --- orchestration ---------------------------------------------------------------------------------
def _resolve(cfg: ExportConfig) -> tuple[ExportSource, RunPick | None]:
    pick = None
    if cfg.checkpoint:
        checkpoint, arch = cfg.checkpoint, cfg.arch
    else:
        pick = pick_from_run(cfg.run or latest_run(cfg.run_root), cfg.pick)
        warn_latency_violation(pick)
        # the member's own fine-tuned weights when the search trained it, else the inherited ones
        checkpoint, arch = pick.finetuned_checkpoint or pick.checkpoint, pick.genome
    return load_source(checkpoint, arch), pick


def warn_latency_violation(pick: RunPick) -> bool:
    """Warn (and return True) when the picked member was measured above the search's --max-latency-ms by
    the latency check: the table predicted it under the limit, the target did not."""
    entry = pick.entry
    if not entry.get("latency_violation"):
        return False
    log.warning(
        "front member #%d was measured at %.4g ms by the latency check, above the search's --max-latency-ms "
        "(its table predicted %.4g ms): it may miss the latency budget on the target; pick a member under "
        "the limit (summary.md marks the violators) if the budget is hard",
        pick.index, entry.get("measured_latency_ms", float("nan")), entry.get("latency_ms", float("nan")),
    )
    return True


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _artifacts(out_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in (ONNX_FILE, FLOAT_FILE, INT8_FILE):
        p = out_dir / name
        if p.is_file():
            out[name] = {"size_bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def class_labels(info: DatasetInfo) -> list[str]:
    """The label of each output index: the data set's class names (a folder's are its sorted class
    folders), else the index itself for sets that name no classes."""
    return list(info.classes) if info.classes else [str(i) for i in range(info.num_classes)]


def _check_data(source: ExportSource, splits: DataSplits) -> None:
    info, want = splits.info, source.dataset
    got = (info.in_channels, info.resolution, info.num_classes)
    expected = (want.get("in_channels"), want.get("resolution"), want.get("num_classes"))
    if got != expected:
        raise ExportError(
            f"data set {info.name!r} has (channels, resolution, classes) {got} but checkpoint "
            f"{source.checkpoint!r} was trained on {want.get('name')!r} {expected}: pass the "
            f"matching data set"
        )


def _owned_files(out_dir: Path) -> set[str]:
    """Files in ``out_dir`` that an earlier export recorded as its own (empty: no earlier export).

    ``report.json`` lists them under ``files``; reports written before that field existed are read
    from their artifacts plus the files every export writes.
    """
    report = out_dir / "report.json"
    if not report.is_file():
        return set()
    try:
        doc = json.loads(report.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return set()
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        return set()
    if isinstance(doc.get("files"), list):
        return {str(f) for f in doc["files"]}
    return set(doc.get("artifacts") or {}) | {CONVERTER_LOG, "metadata.json", "report.json", "config.json"}


def _out_dir(cfg: ExportConfig, genome: str) -> Path:
    """The folder the export ends up in (made, so that it can be locked): ``--out`` or a new run folder."""
    if not cfg.out:
        return cfg.new_run_dir("export", genome[:80])  # default name: the genome
    out_dir = Path(cfg.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {cfg.out!r} is a file, not a folder: give a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _check_out_dir(cfg: ExportConfig, out_dir: Path) -> set[str]:
    """Refuse a folder an export may not replace; return the files an earlier export there wrote.

    ``--out`` may name a folder that holds an earlier export (its recorded files are replaced, so two
    exports never mix), an empty or new folder, or a folder of the user's own files that do not clash
    with this export's names. It must not name a folder of another kind of run (a search or training
    run: replacing their ``config.json`` would break ``--resume``), nor one whose ``model.onnx`` or
    ``config.json`` an export did not write.
    """
    config = out_dir / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("command")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None
        if kind != "export":
            what = f"a {kind!r} run" if kind else "a folder with a config.json that no export wrote"
            raise ExportError(f"--out {cfg.out!r} is {what}: exporting there would replace its files; "
                              f"give a new or empty folder, or leave --out out")
    owned = _owned_files(out_dir)
    foreign = sorted(n for n in OWN_FILES if (out_dir / n).is_file() and n not in owned)
    if foreign:
        raise ExportError(f"--out {cfg.out!r} already holds {', '.join(foreign)}, which no earlier export "
                          f"wrote: nasctl never overwrites files it did not write; give a new or empty "
                          f"folder")
    return {n for n in owned & set(OWN_FILES) if (out_dir / n).is_file()}


# --- staging: the previous export stays whole until the new one is complete ------------------------
STAGING = ".nasctl-staging"  # inside the output folder: same file system, so each move is a rename
JOURNAL = "COMMIT.json"  # written into the staging folder when it is complete: what moves, what goes


def _new_staging(out_dir: Path) -> Path:
    """An empty staging folder; what a killed export left there is finished or dropped first."""
    recover_export(out_dir)
    staging = out_dir / STAGING
    staging.mkdir()
    return staging


def recover_export(out_dir: Path) -> None:
    """Finish a commit that a kill interrupted (its journal exists), else drop a half-made export.

    Called with the folder's lock held, so no other export is writing the staging folder.
    """
    staging = out_dir / STAGING
    if not staging.is_dir():
        return
    if (staging / JOURNAL).is_file():
        log.info("finishing the export into %s that was interrupted while its files were moved", out_dir)
        _roll_forward(staging, out_dir)
    else:
        log.info("removing an unfinished export's files from %s (the export there is unchanged)", out_dir)
        shutil.rmtree(staging)


def _commit(staging: Path, out_dir: Path, previous: set[str]) -> None:
    """Move the new export's files over the old ones; remove the old files the new one lacks.

    The journal is written first, so a kill at any point of the move is finished by the next export
    into the folder (:func:`recover_export`): the folder then holds the new export whole, never a mixture.
    """
    new = sorted(n for n in OWN_FILES if (staging / n).is_file())
    atomic_write_json(staging / JOURNAL, {"move": new, "remove": sorted(previous - set(new))})
    _roll_forward(staging, out_dir)


def _roll_forward(staging: Path, out_dir: Path) -> None:
    plan = json.loads((staging / JOURNAL).read_text())
    for name in sorted(plan["move"], key=lambda n: n == "report.json"):  # the report, the index, last
        if (staging / name).is_file():
            os.replace(staging / name, out_dir / name)
    for name in plan["remove"]:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(staging)


def setup_export(cfg: ExportConfig, splits: DataSplits | None, guard: contextlib.ExitStack) -> ExportContext:
    """Everything before the first step: target, model, data, output folder (locked on ``guard``, the
    files written into its staging folder), config.json."""
    from nasctl.core import versions
    from nasctl.runfolder import run_lock, write_run_config

    cfg.validate()
    target = get_target(cfg.target)
    require_installed(target)
    source, pick = _resolve(cfg)
    train_cfg = source.train_config
    seed = int(_first(cfg.seed, pick.seed if pick else None, train_cfg.get("seed"), 0))
    # the split must be the one the supernet was trained with (digits' test split depends on the
    # seed too): the training seed, whatever --seed says about the export's own random choices
    data_seed = int(_first(train_cfg.get("seed"), seed))
    data_dir = _first(cfg.data_dir, pick.data_dir if pick else None, train_cfg.get("data_dir"))
    if splits is None:
        splits = load_dataset(
            source.dataset["name"], data_dir, seed=data_seed, val_size=train_cfg.get("val_size")
        )
    _check_data(source, splits)
    eps = float(_first(cfg.eps, pick.eps if pick else None, train_cfg.get("eps"), splits.info.default_eps))

    final_dir = _out_dir(cfg, source.genome)
    guard.enter_context(run_lock(final_dir))  # one export at a time into a folder
    previous = _check_out_dir(cfg, final_dir)
    out_dir = _new_staging(final_dir)
    provenance = {
        "kind": source.kind,
        "checkpoint": source.checkpoint,
        "checkpoint_sha256": source.checkpoint_sha256,
        "epoch": source.epoch,
    }
    if pick is not None:
        provenance.update(
            {"run": pick.run_dir, "front_index": pick.index, "knee": pick.is_knee, "front_entry": pick.entry}
        )
    bn_calibration = _bn_calibration(cfg, pick, seed)
    resolved = dict(asdict(cfg), seed=seed, data_seed=data_seed, data_dir=data_dir, eps=eps,
                    bn_calibration=bn_calibration.to_dict())
    write_run_config(
        out_dir, "export", cfg, extra={"genome": source.genome, "source": provenance, "resolved": resolved}
    )
    info = splits.info
    labels = class_labels(info)
    atomic_write_text(out_dir / LABELS_FILE, "\n".join(labels) + "\n")
    metadata: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "genome": source.genome,
        "space": source.space.to_dict(),
        "dataset": info.to_dict(),
        "num_classes": info.num_classes,
        "labels": {"file": LABELS_FILE, "names": labels, "named": bool(info.classes)},
        "seed": seed,
        "data_seed": data_seed,
        "source": provenance,
        "checkpoint_sha256": source.checkpoint_sha256,
        "versions": versions(extra=("onnxsim", "tf-keras", "onnxscript")),  # + converter helpers
        "preprocessing": "none: float32 pixels in [0, 1]; (x - mean) / std happens inside the model",
        "io": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ctx = ExportContext(cfg, target, out_dir, source, splits, seed, eps, metadata)
    ctx.bn_calibration = bn_calibration
    ctx.final_dir, ctx.previous = final_dir, previous
    ctx.report = {
        "format": REPORT_FORMAT,
        "status": "running",
        "genome": source.genome,
        "target": target.name,
        "int8": cfg.int8,
        "plan": list(target.plan(cfg.int8)),
        "labels": LABELS_FILE,
        "config": resolved,
        "source": provenance,
        "steps": [],
        "checks": {},
        "robustness": None,
        "artifacts": {},
        "failed_checks": [],
        "error": None,
    }
    return ctx


def _bn_calibration(cfg: ExportConfig, pick: RunPick | None, seed: int):
    """The search run's own BN calibration (recorded in pareto.json) unless the config says otherwise."""
    from nasctl.nas.supernet import BNCalibration

    run = (pick.bn_calibration if pick else None) or {}
    return BNCalibration(batches=int(_first(cfg.recalib_batches, run.get("batches"), BNCalibration.batches)),
                         batch_size=int(_first(run.get("batch_size"), cfg.recalib_batch_size)),
                         seed=int(_first(run.get("seed"), seed)))


def write_export_report(ctx: ExportContext) -> None:
    """``report.json`` and ``metadata.json`` from what the export has done so far (steps, checks,
    robustness, files), written atomically after the steps and on failure, so a failed export still
    says which steps ran and which check failed."""
    report = ctx.report
    report["steps"] = [r.to_dict() for r in ctx.records]
    report["checks"] = {k: c.to_dict() for k, c in ctx.checks.items()}
    report["robustness"] = ctx.robustness
    report["artifacts"] = _artifacts(ctx.out_dir)
    report["failed_checks"] = [k for k, c in ctx.checks.items() if not c.passed]
    # what this export writes or may still write, recorded before any of it exists: a later export into
    # the same folder replaces exactly these, also after a kill between a file's rename and this report
    present = {n for n in OWN_FILES if (ctx.out_dir / n).is_file()}
    report["files"] = sorted(present | _planned_files(ctx))
    atomic_write_json(ctx.out_dir / "report.json", report)
    atomic_write_json(ctx.out_dir / "metadata.json", ctx.metadata)


# the files each step writes (steps not named here write none)
STEP_FILES = {"onnx": (ONNX_FILE,), "tflite_float32": (FLOAT_FILE, CONVERTER_LOG),
              "tflite_int8": (INT8_FILE,)}


def _planned_files(ctx: ExportContext) -> set[str]:
    own = {"config.json", "report.json", "metadata.json", LABELS_FILE}
    return own | {f for step in ctx.target.plan(ctx.cfg.int8) for f in STEP_FILES.get(step, ())}


def export(
    cfg: ExportConfig, splits: DataSplits | None = None, callbacks: ExportCallbacks | None = None
) -> ExportResult:
    """Run the export described by ``cfg``; see the module docstring.

    ``splits`` overrides the data set the checkpoint names (tests, notebooks). Raises
    :class:`NasctlError` for bad input and converter failures (after writing ``report.json``).
    """
    cb = callbacks or ExportCallbacks()
    with contextlib.ExitStack() as guard:
        ctx = setup_export(cfg, splits, guard)
        try:
            _run_steps(ctx, cb)
        except BaseException as e:
            _keep_failed(ctx, e)
            raise
        _commit(ctx.out_dir, ctx.final_dir, ctx.previous)
    if ctx.previous:
        log.info("replaced the previous export in %s (%d files it had written)", ctx.final_dir,
                 len(ctx.previous))
    report = ctx.report
    return ExportResult(ctx.final_dir, report["status"], report["failed_checks"], ctx.records, report,
                        ctx.metadata)


FAILED = ".nasctl-failed"  # a failed replacement's report and converter log, beside the intact old export


def _keep_failed(ctx: ExportContext, error: BaseException) -> None:
    """Put a failed export's files where the user can read them, and say so in the error.

    With no earlier export in the folder, they land in it as they are (the failed report, the files of
    the steps that finished). Over an earlier export they go to ``.nasctl-failed/`` instead, and the
    earlier export stays whole. Paths the message names are rewritten to where the files now are.
    """
    staging, final = ctx.out_dir, ctx.final_dir
    dest = final / FAILED if ctx.previous else final
    if isinstance(error, NasctlError) and error.args and isinstance(error.args[0], str):
        error.args = (error.args[0].replace(str(staging), str(dest)), *error.args[1:])
    if isinstance(ctx.report.get("error"), str):
        ctx.report["error"] = ctx.report["error"].replace(str(staging), str(dest))
        atomic_write_json(staging / "report.json", ctx.report)
    if not ctx.previous:
        _commit(staging, final, set())
        return
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    log.warning("the previous export in %s is unchanged; this attempt's report is %s", final,
                dest / "report.json")


def _run_steps(ctx: ExportContext, cb: ExportCallbacks) -> None:
    """The target's steps in order, report.json rewritten after each (in the staging folder)."""
    cfg = ctx.cfg
    report, plan = ctx.report, ctx.target.plan(cfg.int8)
    write_export_report(ctx)
    cb.on_start(ctx.final_dir, ctx.source.genome, plan, report["source"])
    t_start = time.perf_counter()
    with ctx.stack:
        if cfg.threads:
            ctx.stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(cfg.threads)
        for i, name in enumerate(plan, 1):
            cb.on_step_start(i, len(plan), name)
            t0 = time.perf_counter()
            try:
                record = STEPS[name](ctx)
            except BaseException as e:  # record, then re-raise (bugs keep their traceback)
                msg = (
                    str(e)
                    if isinstance(e, NasctlError)
                    else ("interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
                )
                ctx.records.append(StepRecord(name, time.perf_counter() - t0, "failed", msg))
                report.update(status="failed", error=msg, total_seconds=time.perf_counter() - t_start)
                write_export_report(ctx)
                cb.on_step_end(i, len(plan), ctx.records[-1])
                raise
            record.seconds = time.perf_counter() - t0
            ctx.records.append(record)
            log.debug("step %s: %.2f s, %s", name, record.seconds, record.summary)
            write_export_report(ctx)
            cb.on_step_end(i, len(plan), record)

    failed = [k for k, c in ctx.checks.items() if not c.passed]
    report.update(status="checks_failed" if failed else "ok", total_seconds=time.perf_counter() - t_start)
    if (ctx.out_dir / ONNX_FILE).is_file():
        from .onnx import stamp_metadata

        stamp_metadata(ctx.out_dir / ONNX_FILE, ctx.metadata)  # final: includes the int8 scales
    write_export_report(ctx)
