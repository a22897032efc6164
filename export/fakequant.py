"""A fake-quantised PyTorch twin of the int8 TFLite model, so white-box gradient attacks can target
what the phone runs (the int8 interpreter itself has no gradients).

What is quantised, mirroring TFLite's full-integer scheme (Jacob et al., CVPR 2018):
* the input, to the model's input grid (scale 1/255, zero point -128 for [0, 1] pixels);
* every Conv2d / Linear weight, symmetric per output channel to [-127, 127] (BatchNorm folded
  first, as the converter does);
* every Conv2d / Linear output and the normalisation's output, asymmetric per tensor to
  [-128, 127], with min/max ranges observed on the calibration images (TFLite's default).
Rounding uses a straight-through estimator: the forward pass is quantised, the backward pass is
the identity. Known simplifications (kept small on purpose): a ReLU that TFLite fuses into its conv
is quantised after the conv here (before the ReLU), biases stay float, and element-wise add/concat
outputs are not re-quantised. The report records the twin's top-1 agreement with the int8 model,
which says how faithful the twin is.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def fake_quant(
    x: torch.Tensor, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127
) -> torch.Tensor:
    """Quantise-dequantise ``x`` (straight-through gradient)."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return x + ((q - zero_point) * scale - x).detach()


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero_point) of asymmetric int8 covering [lo, hi] and 0, like TFLite's calibration."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zp


@torch.no_grad()
def quantize_weight_per_channel(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (dim 0), range [-127, 127], returned dequantised."""
    dims = tuple(range(1, w.dim()))
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class ActQuant(nn.Module):
    """Observes min/max while ``observing``, then fake-quantises to per-tensor int8."""

    def __init__(self):
        super().__init__()
        self.observing = True
        self.lo, self.hi = float("inf"), float("-inf")
        self.scale, self.zero_point = 1.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
            return x
        return fake_quant(x, self.scale, self.zero_point)

    def freeze(self) -> None:
        self.scale, self.zero_point = activation_qparams(self.lo, self.hi)
        self.observing = False


class FakeQuantTwin(nn.Module):
    """``model`` (BatchNorm folded) with int8 fake quantisation of input, weights and activations."""

    def __init__(self, model: nn.Module, input_scale: float = 1 / 255, input_zero_point: int = -128):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.input_scale, self.input_zero_point = input_scale, input_zero_point
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.observers: list[ActQuant] = []
        self._wrap(self.model)

    def _wrap(self, module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                child.weight.data = quantize_weight_per_channel(child.weight.data)
                obs = ActQuant()
                self.observers.append(obs)
                setattr(module, name, nn.Sequential(child, obs))
            elif type(child).__name__ == "Normalize":  # nasctl's in-model (x - mean) / std
                obs = ActQuant()
                self.observers.append(obs)
                setattr(module, name, nn.Sequential(child, obs))
            else:
                self._wrap(child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(fake_quant(x, self.input_scale, self.input_zero_point))

    @torch.no_grad()
    def calibrate(self, images: np.ndarray, batch_size: int = 256) -> FakeQuantTwin:
        """Observe activation ranges on ``images`` (float32 [N, C, H, W]) and freeze them."""
        self.eval()
        for obs in self.observers:
            obs.observing = True
        for i in range(0, len(images), batch_size):
            self(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
        for obs in self.observers:
            obs.freeze()
        return self


def make_fake_quant_twin(
    folded_model: nn.Module,
    calibration_images: np.ndarray,
    input_scale: float = 1 / 255,
    input_zero_point: int = -128,
) -> FakeQuantTwin:
    """The calibrated twin of ``folded_model``; pass the int8 model's own input scale/zero point."""
    return FakeQuantTwin(folded_model, input_scale, input_zero_point).calibrate(calibration_images)
