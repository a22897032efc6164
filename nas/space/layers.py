"""Weight-sharing primitives: layers that hold the largest weights and run a leading slice.

A block is written once against these layers. In the supernet they are "slim" (they hold the
largest weights and use the first ``active`` channels, Once-for-All style); ``to_static`` turns a
slim layer into a plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` with copied weights, which is what an
extracted subnet and every export contains. Each layer is described by a spec (:class:`ConvSpec`,
:class:`BNSpec`) so parameter counts and MACs can be computed from a genome without building a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """A bias-free 2-D convolution; ``depthwise`` means groups == in_ch == out_ch."""

    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    depthwise: bool = False

    def params(self) -> int:
        per_out = 1 if self.depthwise else self.in_ch
        return self.out_ch * per_out * self.kernel * self.kernel

    def macs(self, out_hw: int) -> int:
        return self.params() * out_hw * out_hw

    def build(self) -> "SlimConv2d":
        return SlimConv2d(self)


@dataclass(frozen=True)
class BNSpec:
    """BatchNorm over ``ch`` channels (affine: 2 parameters per channel)."""

    ch: int

    def params(self) -> int:
        return 2 * self.ch

    def macs(self, out_hw: int) -> int:  # folded into the conv at deployment
        return 0

    def build(self) -> "SlimBatchNorm2d":
        return SlimBatchNorm2d(self)


@dataclass(frozen=True)
class LinearSpec:
    """A fully connected layer with bias (the classifier)."""

    in_features: int
    out_features: int

    def params(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def macs(self, out_hw: int = 1) -> int:
        return self.in_features * self.out_features

    def build(self) -> "SlimLinear":
        return SlimLinear(self)


def out_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded conv with this stride."""
    return (size + stride - 1) // stride


class SlimConv2d(nn.Module):
    """Conv2d holding its largest weight; runs on the first ``active.in_ch`` / ``active.out_ch``."""

    def __init__(self, spec: ConvSpec):
        super().__init__()
        self.max_spec = spec
        self.active = spec
        per_out = 1 if spec.depthwise else spec.in_ch
        self.weight = nn.Parameter(torch.empty(spec.out_ch, per_out, spec.kernel, spec.kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def set_active(self, spec: ConvSpec) -> None:
        m = self.max_spec
        if (spec.in_ch > m.in_ch or spec.out_ch > m.out_ch or spec.kernel > m.kernel
                or spec.stride != m.stride
                or spec.depthwise != m.depthwise or spec.kernel % 2 != m.kernel % 2):
            raise ValueError(f"active conv {spec} does not fit in {m}")
        self.active = spec

    def _weight(self) -> torch.Tensor:
        a = self.active
        w = self.weight[: a.out_ch] if a.depthwise else self.weight[: a.out_ch, : a.in_ch]
        if a.kernel < self.max_spec.kernel:  # a smaller kernel is the centre of the largest
            off = (self.max_spec.kernel - a.kernel) // 2
            w = w[:, :, off: off + a.kernel, off: off + a.kernel]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.active
        groups = a.in_ch if a.depthwise else 1
        return F.conv2d(x, self._weight(), None, a.stride, a.kernel // 2, 1, groups)

    def to_static(self) -> nn.Conv2d:
        a = self.active
        conv = nn.Conv2d(a.in_ch, a.out_ch, a.kernel, a.stride, a.kernel // 2,
                         groups=a.in_ch if a.depthwise else 1, bias=False,
                         device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.data.copy_(self._weight().detach())
        return conv.train(self.training)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics and affine parameters are sliced to the active width.

    Slices of the first dimension are views, so running statistics updated in training mode
    land in the shared buffers.
    """

    def __init__(self, spec: BNSpec):
        super().__init__(spec.ch)
        self.max_spec = spec
        self.active = spec

    def set_active(self, spec: BNSpec) -> None:
        if spec.ch > self.max_spec.ch:
            raise ValueError(f"active BN {spec} does not fit in {self.max_spec}")
        self.active = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active.ch
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        else:
            momentum = 0.0
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c], self.bias[:c], use_batch_stats, momentum, self.eps,
        )

    def to_static(self) -> nn.BatchNorm2d:
        c = self.active.ch
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum, device=self.weight.device,
                            dtype=self.weight.dtype)
        bn.weight.data.copy_(self.weight.detach()[:c])
        bn.bias.data.copy_(self.bias.detach()[:c])
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn.train(self.training)


class SlimLinear(nn.Module):
    """Linear layer holding its largest weight; runs on the first ``active.in_features`` inputs."""

    def __init__(self, spec: LinearSpec):
        super().__init__()
        self.max_spec = spec
        self.active = spec
        ref = nn.Linear(spec.in_features, spec.out_features)  # PyTorch's default initialisation
        self.weight, self.bias = ref.weight, ref.bias

    def set_active(self, spec: LinearSpec) -> None:
        if spec.in_features > self.max_spec.in_features or spec.out_features != self.max_spec.out_features:
            raise ValueError(f"active linear {spec} does not fit in {self.max_spec}")
        self.active = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : self.active.in_features], self.bias)

    def to_static(self) -> nn.Linear:
        a = self.active
        fc = nn.Linear(a.in_features, a.out_features, device=self.weight.device, dtype=self.weight.dtype)
        fc.weight.data.copy_(self.weight.detach()[:, : a.in_features])
        fc.bias.data.copy_(self.bias.detach())
        return fc.train(self.training)


Spec = ConvSpec | BNSpec
SLIM_TYPES = (SlimConv2d, SlimBatchNorm2d, SlimLinear)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle (becomes RESHAPE + TRANSPOSE in TFLite)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
