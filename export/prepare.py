"""One-time model preparation and the data every export check uses (BatchNorm statistics come from
:func:`nasctl.nas.supernet.prepare_subnet`, the search's one door).

* :func:`fold_batchnorm` folds each BatchNorm into the convolution that feeds it, found by tracing
  one forward pass (no reliance on module names), so ONNX, TFLite and the fake-quantised twin all
  see the conv weights that int8 quantisation really quantises.
* :func:`calibration_set` draws the int8 calibration images from the training split (seeded) and
  fingerprints them (sha256 of the float32 NHWC bytes the converter receives).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nasctl.nas.data import TensorSplit

log = logging.getLogger(__name__)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm2d that directly follows a Conv2d folded
    into it; returns (folded model, number of folds).

    Pairs are found by running ``example`` once and matching each BatchNorm's input tensor with the
    output tensor of a convolution (object identity). A conv or BN used more than once is left alone.
    Callers check the folded model against the original numerically.
    """
    model = copy.deepcopy(model).eval()
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def after_conv(name):
        def hook(_m, _inp, out):
            produced[id(out)] = (name, out)  # the tensor is kept alive, so ids cannot be reused

        return hook

    def before_bn(name):
        def hook(_m, inp):
            hit = produced.get(id(inp[0]))
            if hit is not None and hit[1] is inp[0]:
                pairs.append((hit[0], name))

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(after_conv(name)))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(before_bn(name)))
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    folds = 0
    for conv_name, bn_name in pairs:
        if convs.count(conv_name) > 1 or bns.count(bn_name) > 1:
            continue
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        fused.weight.requires_grad_(False)
        if fused.bias is not None:
            fused.bias.requires_grad_(False)
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
        folds += 1
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    log.debug("folded %d BatchNorm layers into convolutions, %d left", folds, left)
    return model, folds


@dataclass
class CalibrationSet:
    """int8 calibration images: float32 [N, C, H, W] in [0, 1] from the training split."""

    images: np.ndarray
    indices: np.ndarray  # rows of the training split
    seed: int

    def nhwc(self) -> np.ndarray:
        return np.ascontiguousarray(self.images.transpose(0, 2, 3, 1), dtype=np.float32)

    @property
    def sha256(self) -> str:
        """sha256 of the C-contiguous float32 NHWC array exactly as the converter receives it."""
        return hashlib.sha256(self.nhwc().tobytes()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "split": "train",
            "size": len(self.images),
            "seed": self.seed,
            "layout": "NHWC",
            "dtype": "float32",
            "sha256": self.sha256,
        }


def calibration_set(train: TensorSplit, size: int, seed: int) -> CalibrationSet:
    """``size`` training images drawn without replacement with ``numpy.random.default_rng(seed)``."""
    n = len(train)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(size, n), replace=False))
    images = train.subset(idx).numpy_images()
    return CalibrationSet(np.ascontiguousarray(images, dtype=np.float32), idx, seed)
