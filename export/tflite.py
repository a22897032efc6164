"""ONNX -> TFLite float32 (onnx2tf) -> full-integer int8 (TFLiteConverter). The only module that
imports onnx2tf and TensorFlow; both are imported inside the functions that need them.

Path: onnx2tf converts a *copy* of the ONNX file in a scratch folder (it rewrites its input in
place with onnxsim, which it runs as the ``onnxsim`` command, so the environment's ``bin`` goes
first on PATH) into a saved_model with a signature and ``model_float32.tflite`` (NHWC input
[1, H, W, C]). The int8 model is then converted from that saved_model by
``tf.lite.TFLiteConverter`` restricted to ``TFLITE_BUILTINS_INT8`` (int8 input and output,
per-channel weights, activations calibrated on the given images): an op without an int8 kernel
fails loudly here instead of silently falling back to Flex ops that LiteRT cannot run.

Offline: onnx2tf fetches a sample image file from the internet for models with one 3-channel
4-D input; its download function is replaced for the duration of the call by one that returns
local data (the samples only feed onnx2tf's own optional output checks, never calibration).

Converter output (onnx2tf prints hundreds of lines; TensorFlow logs from C++) goes to a log file
through file-descriptor redirection; a failure raises :class:`ConversionError` with the
converter's reason, the failing op and the log's path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np

from nasctl.core import atomic_write_bytes

from .errors import ConversionError, ExportError
from .targets import EXTRA_HINT

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAMPLE_SHAPE = (20, 128, 128, 3)  # what onnx2tf's download_test_image_data returns


def import_converters() -> tuple[Any, Any]:
    """(onnx2tf.onnx2tf module, tensorflow); a missing package names the export extra."""
    # torch's compiler stack (torch._dynamo -> triton) must be loaded before TensorFlow: in the
    # other order the first torch optimiser created later in the same process segfaults
    # (torch 2.14 + tensorflow 2.21; tests/test_export_units.py::test_training_after_tensorflow)
    import torch._dynamo  # noqa: F401

    try:
        import onnx2tf.onnx2tf as o2t  # imports tensorflow itself
        import tensorflow as tf
    except ImportError as e:
        raise ExportError(
            f"TFLite export needs the export extra ({e.name or e} is not installed): {EXTRA_HINT}"
        ) from e
    return o2t, tf


@contextlib.contextmanager
def _captured(log_path: Path) -> Iterator[Any]:
    """Send everything written to stdout/stderr (Python and C/C++ alike) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as logf:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(logf.fileno(), 1)
        os.dup2(logf.fileno(), 2)
        try:
            with contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
                yield logf
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])


@contextlib.contextmanager
def _converter_environment(o2t: Any) -> Iterator[None]:
    """onnx2tf's process-wide side effects, undone afterwards: PATH (for ``onnxsim``), the sample
    download (replaced by local data), CUDA_VISIBLE_DEVICES (onnx2tf sets it to -1)."""
    saved_env = {k: os.environ.get(k) for k in ("PATH", "CUDA_VISIBLE_DEVICES")}
    saved_download = o2t.download_test_image_data
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    o2t.download_test_image_data = _offline_sample_images
    try:
        yield
    finally:
        o2t.download_test_image_data = saved_download
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _offline_sample_images() -> np.ndarray:
    return np.random.default_rng(0).random(SAMPLE_SHAPE, dtype=np.float32)


def _last_error_line(log_path: Path) -> str | None:
    try:
        lines = [_ANSI.sub("", ln).strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return errors[-1][len("ERROR:") :].strip() if errors else None


def _node_op_type(onnx_paths: list[Path], node_name: str | None) -> str | None:
    if not node_name:
        return None
    import onnx

    for path in onnx_paths:
        try:
            for node in onnx.load(str(path), load_external_data=False).graph.node:
                if node.name == node_name:
                    return node.op_type
        except Exception as e:  # noqa: BLE001 -- best effort for a message only
            log.debug("could not read %s for the failing node's op type: %s", path, e)
    return None


class TFLiteConversion:
    """A scratch workspace for converting one ONNX file; use as a context manager.

    >>> with TFLiteConversion("out/model.onnx", "out/onnx2tf.log") as conv:
    ...     conv.float32("out/model_float32.tflite")
    ...     conv.int8(calib_nhwc, "out/model_int8.tflite")

    The scratch folder (inside the output folder, so renames are atomic) is removed on exit; the
    log file stays.
    """

    def __init__(self, onnx_path: str | os.PathLike, log_path: str | os.PathLike, simplify: bool = True,
                 verbosity: str = "info"):
        # simplify=False skips onnx2tf's onnxsim pass, which it runs as a separate ``onnxsim`` process
        # (about 6 of the 6.5 s a small model's conversion takes); the profiler converts hundreds of
        # single-layer models, already constant-folded by the exporter, and turns it off
        self.simplify, self.verbosity = simplify, verbosity
        self.onnx_path = Path(onnx_path)
        self.log_path = Path(log_path)
        self.scratch: Path | None = None
        self.saved_model: Path | None = None
        self._o2t = self._tf = None

    def __enter__(self) -> Self:
        self.log_path.write_text("")  # one log per conversion
        with _captured(self.log_path):
            self._o2t, self._tf = import_converters()
        self.scratch = Path(tempfile.mkdtemp(prefix=".tflite-scratch-", dir=self.onnx_path.parent))
        shutil.copyfile(self.onnx_path, self.scratch / "model.onnx")
        return self

    def __exit__(self, *exc) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _fail(self, what: str, reason: str, op: str | None = None) -> ConversionError:
        at = f" at {op}" if op else ""
        return ConversionError(
            f"{what} failed{at}: {reason} (full converter output: {self.log_path}; "
            f"the files written before this step are kept)",
            op=op,
            log_path=str(self.log_path),
        )

    def float32(self, out_path: str | os.PathLike) -> dict[str, Any]:
        """onnx2tf: saved_model (kept for :meth:`int8`) and the float32 TFLite file at ``out_path``."""
        assert self.scratch is not None, "use TFLiteConversion as a context manager"
        src = self.scratch / "model.onnx"
        out_dir = self.scratch / "saved_model"
        t0 = time.perf_counter()
        with _captured(self.log_path) as logf, _converter_environment(self._o2t):
            print(f"== onnx2tf {src} -> {out_dir}", file=logf, flush=True)
            try:
                self._o2t.convert(
                    input_onnx_file_path=str(src),
                    output_folder_path=str(out_dir),
                    output_signaturedefs=True,
                    not_use_onnxsim=not self.simplify,
                    verbosity=self.verbosity,
                )
                error = None
            except SystemExit as e:  # onnx2tf calls sys.exit(1) after logging an ERROR line
                error = e
            except Exception as e:  # noqa: BLE001 -- any converter bug becomes one clear line
                error = e
                import traceback

                traceback.print_exc(file=logf)
        if error is not None:
            node = getattr(error, "onnx_op_name", None)
            op_type = _node_op_type([src, self.onnx_path], node)
            if isinstance(error, ModuleNotFoundError) and str(error.name or "").startswith("onnx2tf.ops."):
                op_type = op_type or error.name.rsplit(".", 1)[-1]
                reason = f"onnx2tf has no converter for the ONNX op {op_type}"
            elif isinstance(error, SystemExit):
                reason = _last_error_line(self.log_path) or f"onnx2tf exited with status {error.code}"
            else:
                first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
            op = (
                f"ONNX node {node!r} ({op_type})"
                if node and op_type
                else (f"ONNX node {node!r}" if node else None)
            )
            raise self._fail("onnx2tf conversion", reason, op) from (
                error if isinstance(error, Exception) else None
            )
        produced = out_dir / "model_float32.tflite"
        if not produced.is_file() or not (out_dir / "saved_model.pb").is_file():
            raise self._fail(
                "onnx2tf conversion",
                _last_error_line(self.log_path)
                or "it finished without writing model_float32.tflite and a saved_model",
            )
        self.saved_model = out_dir
        out_path = Path(out_path)
        os.replace(produced, out_path)  # same file system: atomic
        return {"converter": "onnx2tf", "seconds": time.perf_counter() - t0}

    def int8(self, calib_nhwc: np.ndarray, out_path: str | os.PathLike) -> dict[str, Any]:
        """Full-integer int8 TFLite from the saved_model, calibrated on ``calib_nhwc`` float32
        [N, H, W, C] in [0, 1]; int8 input and output; builtin int8 ops only."""
        if self.saved_model is None:
            raise RuntimeError("call float32() before int8()")
        tf = self._tf
        calib = np.ascontiguousarray(calib_nhwc, dtype=np.float32)

        def representative():
            for i in range(len(calib)):
                yield [calib[i : i + 1]]

        t0 = time.perf_counter()
        with _captured(self.log_path) as logf:
            print(
                f"== TFLiteConverter int8 from {self.saved_model} ({len(calib)} calibration images)",
                file=logf,
                flush=True,
            )
            try:
                conv = tf.lite.TFLiteConverter.from_saved_model(str(self.saved_model))
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
                data = conv.convert()
                error = None
            except Exception as e:  # noqa: BLE001 -- ConverterError and friends
                error = e
                print(f"{type(e).__name__}: {e}", file=logf, flush=True)
        if error is not None:
            text = _ANSI.sub("", str(error))
            lines = [ln.strip() for ln in text.splitlines() if "error:" in ln]
            reason = (lines[0] if lines else (text.strip().splitlines() or [type(error).__name__])[0])[:240]
            m = re.search(r"'((?:tf|tfl)\.[A-Za-z0-9_]+)' op", text)
            raise self._fail(
                "int8 conversion (TFLITE_BUILTINS_INT8)", reason, m.group(1) if m else None
            ) from error
        atomic_write_bytes(out_path, data)
        return {
            "converter": f"tf.lite.TFLiteConverter {tf.__version__} (TFLITE_BUILTINS_INT8)",
            "seconds": time.perf_counter() - t0,
            "calibration_images": len(calib),
        }
