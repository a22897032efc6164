"""Numeric checks between hops: each returns a :class:`Check` that goes into ``report.json``.

* PyTorch -> ONNX Runtime: max abs logit difference on real validation images (<= 1e-4).
* ONNX -> TFLite float32: max abs logit difference on the same images (<= 1e-4).
* TFLite float32 -> int8: clean top-1 accuracy on the test split vs the float PyTorch model (drop
  <= ``max_drop`` points) and top-1 agreement with the float model.
All models take float32 [N, C, H, W] pixels in [0, 1] (see :mod:`runtimes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

DIFF_TOLERANCE = 1e-4  # max abs logit difference accepted between float hops


@dataclass
class Check:
    """One verified hop: ``value`` of ``metric`` against ``threshold`` (``passed`` decides)."""

    name: str
    metric: str
    value: float
    threshold: float | None
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cmp = "<=" if self.passed else ">"
        if self.metric == "max_abs_diff":
            text = f"max|diff| {self.value:.1e} ({cmp} {self.threshold:.0e})"
        elif self.metric == "int8_acc_drop":
            d = self.detail
            text = (
                f"acc {d['int8_acc']:.1f} % vs float {d['float_acc']:.1f} % (drop {self.value:.1f} {cmp} "
                f"{self.threshold:g}), top-1 agree {d['top1_agreement']:.1f} %"
            )
        else:
            text = f"{self.metric} {self.value:g}"
        return f"{text} {'ok' if self.passed else 'FAILED'}"


def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 logits of ``model`` in eval mode for images ``x`` [N, C, H, W]."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Percent of rows whose argmax agrees."""
    return 100.0 * float(np.mean(a.argmax(1) == b.argmax(1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(1) == labels))


def diff_check(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    against: str,
    tolerance: float = DIFF_TOLERANCE,
    split: str = "val",
) -> Check:
    """Max abs logit difference of ``candidate`` vs ``reference`` (same images)."""
    d = max_abs_diff(reference, candidate)
    return Check(
        name,
        "max_abs_diff",
        d,
        tolerance,
        bool(d <= tolerance),
        {
            "against": against,
            "images": len(reference),
            "split": split,
            "mean_abs_diff": float(np.mean(np.abs(reference - candidate))),
            "top1_agreement": top1_agreement(reference, candidate),
        },
    )


def int8_check(
    float_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: np.ndarray,
    max_drop: float,
    float_tflite_logits: np.ndarray | None = None,
    split: str = "test",
) -> Check:
    """Clean-accuracy drop (points) of int8 vs the float model, and their top-1 agreement."""
    float_acc, int8_acc = accuracy(float_logits, labels), accuracy(int8_logits, labels)
    drop = float_acc - int8_acc
    detail = {
        "float_acc": float_acc,
        "int8_acc": int8_acc,
        "top1_agreement": top1_agreement(float_logits, int8_logits),
        "images": len(labels),
        "split": split,
        "float_reference": "pytorch",
    }
    if float_tflite_logits is not None:
        detail["float_tflite_acc"] = accuracy(float_tflite_logits, labels)
        detail["top1_agreement_vs_float_tflite"] = top1_agreement(float_tflite_logits, int8_logits)
    return Check("tflite_int8", "int8_acc_drop", drop, max_drop, bool(drop <= max_drop), detail)


def tflite_quantization_summary(interpreter: Any) -> dict[str, int]:
    """Counts of int8 tensors with per-channel (several scales) and per-tensor quantisation."""
    per_channel = per_tensor = 0
    for t in interpreter.get_tensor_details():
        q = t.get("quantization_parameters") or {}
        scales = q.get("scales")
        if np.dtype(t["dtype"]) != np.int8 or scales is None or len(scales) == 0:
            continue
        if len(scales) > 1:
            per_channel += 1
        else:
            per_tensor += 1
    return {"int8_per_channel_tensors": per_channel, "int8_per_tensor_tensors": per_tensor}
