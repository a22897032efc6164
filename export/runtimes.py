"""Run exported artifacts the way a deployment would: ONNX Runtime and the LiteRT interpreter.

Both runners take what the PyTorch model takes -- float32 [N, C, H, W] pixels in [0, 1] -- and
return float32 logits [N, classes], so every check compares like with like. The TFLite runner
transposes to the interpreter's NHWC layout, quantises int8 inputs with the model's *own* input
scale and zero point (round half away from zero, as TFLite's quantize op) and dequantises int8
outputs with the output's scale and zero point. Exported models have a batch of 1 (static shapes,
as on phones), so the runners loop over images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Route C-level stderr (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" line) to
    the debug log instead of the terminal, where it would break the CLI's step lines."""
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("litert: %s", line)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


class OnnxRunner:
    """ONNX Runtime CPU session over one ``.onnx`` file."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        """One call on an input already shaped like the model's input."""
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        batch = self.input_shape[0]
        if not isinstance(batch, int):  # symbolic batch dimension: one call
            return self.run_one(x).astype(np.float32)
        return np.concatenate([self.run_one(x[i : i + batch]) for i in range(0, len(x), batch)]).astype(
            np.float32
        )


class TFLiteRunner:
    """LiteRT (``ai_edge_litert``) interpreter over one ``.tflite`` file, float32 or int8."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(path)
        with _stderr_to_log():
            self.interpreter = Interpreter(model_path=self.path, num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"])
        self.input_dtype = np.dtype(self.input["dtype"])
        self.output_dtype = np.dtype(self.output["dtype"])

    # --- quantisation parameters ---------------------------------------------------------------
    @property
    def input_quant(self) -> tuple[float, int]:
        """(scale, zero_point) of the input; (0.0, 0) for a float input."""
        scale, zp = self.input["quantization"]
        return float(scale), int(zp)

    @property
    def output_quant(self) -> tuple[float, int]:
        scale, zp = self.output["quantization"]
        return float(scale), int(zp)

    def io_details(self, chw: tuple[int, int, int]) -> dict[str, Any]:
        """Shapes, dtypes, layout and quantisation of input and output, for metadata.json.

        ``chw`` is the model's (channels, height, width), which tells NHWC from NCHW.
        """

        def one(d, quant):
            out = {
                "name": d["name"],
                "shape": [int(v) for v in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
            }
            if np.issubdtype(np.dtype(d["dtype"]), np.integer):
                out["scale"], out["zero_point"] = quant
            return out

        return {
            "input": {**one(self.input, self.input_quant), "layout": self.layout(chw)},
            "output": one(self.output, self.output_quant),
        }

    def layout(self, chw: tuple[int, int, int]) -> str:
        c, h, w = chw
        if self.input_shape[1:] == (h, w, c):
            return "NHWC"
        if self.input_shape[1:] == (c, h, w):
            return "NCHW"
        raise ValueError(
            f"{self.path}: input shape {list(self.input_shape)} fits neither NHWC nor NCHW "
            f"images of shape {[c, h, w]}"
        )

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float pixels -> the interpreter's input dtype with its own scale and zero point."""
        if not np.issubdtype(self.input_dtype, np.integer):
            return x.astype(self.input_dtype)
        scale, zp = self.input_quant
        info = np.iinfo(self.input_dtype)
        return np.clip(_round_half_away(x / scale) + zp, info.min, info.max).astype(self.input_dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if not np.issubdtype(self.output_dtype, np.integer):
            return y.astype(np.float32)
        scale, zp = self.output_quant
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)

    # --- running -------------------------------------------------------------------------------
    def to_input_layout(self, x: np.ndarray) -> np.ndarray:
        """[N, C, H, W] -> the interpreter's layout (NHWC after onnx2tf), checking the shape."""
        if self.layout(tuple(x.shape[1:])) == "NHWC":
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return np.ascontiguousarray(x)

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """One call on an input already in the interpreter's layout and dtype; raw output."""
        it = self.interpreter
        it.set_tensor(self.input["index"], x)
        it.invoke()
        return it.get_tensor(self.output["index"]).copy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 logits [N, classes] for float32 pixels [N, C, H, W] in [0, 1]."""
        xs = self.quantize_input(self.to_input_layout(np.asarray(x, dtype=np.float32)))
        b = self.input_shape[0]
        outs = [self.invoke(xs[i : i + b]) for i in range(0, len(xs), b)]
        return self.dequantize_output(np.concatenate(outs))
