"""The registry of tiny block types that a search-space layer can choose from.

Each block declares its layers as specs (``layer_specs``) once; the same declaration builds the
supernet's slim layers at their largest size, activates a subnet's slice, and gives the analytic
parameter and MAC counts. Adding a block type is one class and one ``@register_block`` line; tests
parametrised over :data:`BLOCKS` cover it automatically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SLIM_TYPES, BNSpec, ConvSpec, Spec, channel_shuffle, out_size

SKIP = "skip"

@dataclass(frozen=True)
class BlockType:
    """A registered block token: its class (the weight-sharing family) and fixed hyper-parameters."""

    token: str
    cls: type["Block"]
    hparams: tuple[tuple[str, int], ...]

    def __call__(self, cin: int, cout: int, stride: int) -> "Block":
        return self.cls(cin, cout, stride, token=self.token, **dict(self.hparams))

    @property
    def family(self) -> str:
        return self.cls.family_of(dict(self.hparams))


BLOCKS: dict[str, BlockType] = {}


def register_block(token: str, **kwargs: int) -> Callable[[type["Block"]], type["Block"]]:
    """Register a block class under ``token`` with fixed hyper-parameters (kernel, expansion)."""

    def deco(cls: type["Block"]) -> type["Block"]:
        if token in BLOCKS:
            raise ValueError(f"block token {token!r} registered twice")
        if token.split("_")[0] in ("stem", "head"):
            raise ValueError(f"block token {token!r}: 'stem_' and 'head_' are the genome's own tokens")
        BLOCKS[token] = BlockType(token, cls, tuple(sorted(kwargs.items())))
        return cls

    return deco


def family_block(tokens: list[str], cin: int, cout: int, stride: int) -> "Block":
    """One block holding the weights of every token of a family (same class and family name).

    Each named layer is stored at the largest shape any variant gives it (:func:`union_specs`):
    smaller kernels use the centre of the largest kernel, narrower layers the first channels
    (Once-for-All's elastic kernel/expansion), so all variants train the same weights instead of
    splitting the few training steps between them. Variants nest by layer name: a plain
    ``conv_k3`` is the first ``cout`` filters of a ``fir_k3``'s expansion conv."""
    types = [BLOCKS[t] for t in tokens]
    if len({t.family for t in types}) != 1 or len({t.cls for t in types}) != 1:
        raise ValueError(f"tokens {tokens} are not one family")
    block = types[0].cls(cin, cout, stride, token=types[0].token, variants=tuple(tokens),
                         **dict(types[0].hparams))
    block.set_active(cin, cout, types[0].token)
    return block


def _spec_max(a: Spec, b: Spec) -> Spec:
    """The smallest spec that holds both ``a`` and ``b`` (same layer of two variants)."""
    if isinstance(a, BNSpec) and isinstance(b, BNSpec):
        return BNSpec(max(a.ch, b.ch))
    if (isinstance(a, ConvSpec) and isinstance(b, ConvSpec) and a.stride == b.stride
            and a.depthwise == b.depthwise and a.kernel % 2 == b.kernel % 2):
        return ConvSpec(max(a.in_ch, b.in_ch), max(a.out_ch, b.out_ch), max(a.kernel, b.kernel), a.stride,
                        a.depthwise)
    raise ValueError(f"layer specs {a} and {b} cannot share weights")


class Block(nn.Module):
    """A searchable block: fixed stride, active input/output width set by :meth:`set_active`.

    Subclasses implement ``specs(cin, cout)`` -> list of (name, spec, at_input_resolution) and
    ``forward``. Layers named in the specs become attributes.
    """

    def __init__(self, cin: int, cout: int, stride: int, token: str, variants: tuple[str, ...] = (),
                 **hparams):
        """``variants``: registered tokens of this family whose weights this block must also hold
        (the supernet's family block); empty for a block of one type."""
        super().__init__()
        self.token = token
        self.stride = stride
        self.hparams = hparams
        for name, spec in self.union_specs(variants, cin, cout).items():
            setattr(self, name, spec.build())
        self.hparams = hparams
        self.in_ch, self.out_ch = cin, cout

    def union_specs(self, variants: tuple[str, ...], cin: int, cout: int) -> dict[str, Spec]:
        """Each layer name of this block or of any of ``variants`` with the largest shape it takes."""
        merged: dict[str, Spec] = {name: spec for name, spec, _ in self.specs(cin, cout)}
        for token in variants:
            self.hparams = dict(BLOCKS[token].hparams)
            for name, spec, _ in self.specs(cin, cout):
                merged[name] = _spec_max(merged[name], spec) if name in merged else spec
        return merged

    # --- to be implemented -------------------------------------------------------------------
    def specs(self, cin: int, cout: int) -> list[tuple[str, Spec, bool]]:
        raise NotImplementedError

    @classmethod
    def family_of(cls, hparams: dict[str, int]) -> str:
        """Variants with the same family share one set of weights in the supernet."""
        return cls.__name__

    # --- shared machinery --------------------------------------------------------------------
    def set_active(self, cin: int, cout: int, token: str | None = None) -> None:
        """Activate ``cin`` -> ``cout`` channels, and, in a family block, the variant ``token``."""
        if token is not None:
            self.token, self.hparams = token, dict(BLOCKS[token].hparams)
        for name, spec, _ in self.specs(cin, cout):
            getattr(self, name).set_active(spec)
        self.in_ch, self.out_ch = cin, cout

    def drop_inactive(self) -> None:
        """Remove layers the active variant does not use (e.g. the expansion conv when e=1)."""
        keep = {name for name, _, _ in self.specs(self.in_ch, self.out_ch)}
        for name, _ in list(self.named_children()):
            if name not in keep:
                delattr(self, name)

    def cost(self, cin: int, cout: int, in_hw: int) -> tuple[int, int]:
        return block_cost(self.specs(cin, cout), in_hw, self.stride)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def block_cost(specs: list[tuple[str, Spec, bool]], in_hw: int, stride: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of a block's layers at input resolution ``in_hw``."""
    hw_out = out_size(in_hw, stride)
    params = macs = 0
    for _, spec, at_input in specs:
        params += spec.params()
        if isinstance(spec, ConvSpec):
            macs += spec.macs(in_hw if at_input else hw_out)
    return params, macs


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1) -> ConvSpec:
    return ConvSpec(cin, cout, k, stride)


def _dw(c: int, k: int, stride: int = 1) -> ConvSpec:
    return ConvSpec(c, c, k, stride, depthwise=True)


@register_block("ir_k3_e1", kernel=3, expand=1)
@register_block("ir_k3_e3", kernel=3, expand=3)
@register_block("ir_k3_e6", kernel=3, expand=6)
@register_block("ir_k5_e1", kernel=5, expand=1)
@register_block("ir_k5_e3", kernel=5, expand=3)
@register_block("ir_k5_e6", kernel=5, expand=6)
@register_block("ir_k7_e1", kernel=7, expand=1)
@register_block("ir_k7_e3", kernel=7, expand=3)
@register_block("ir_k7_e6", kernel=7, expand=6)
class InvertedResidual(Block):
    """MobileNetV2 inverted residual: 1x1 expand, kxk depthwise, 1x1 linear projection."""

    @classmethod
    def family_of(cls, hparams):
        # without expansion the depthwise conv runs on the block's input channels, not on expanded
        # hidden channels: sharing its weights with e>1 variants would mix two meanings
        return cls.__name__ + ("_e1" if hparams["expand"] == 1 else "")

    def specs(self, cin, cout):
        k, e = self.hparams["kernel"], self.hparams["expand"]
        hid = cin * e
        out: list[tuple[str, Spec, bool]] = []
        if e != 1:
            out += [("pw", _conv(cin, hid), True), ("bn1", BNSpec(hid), True)]
        out += [("dw", _dw(hid, k, self.stride), False), ("bn2", BNSpec(hid), False),
                ("pwl", _conv(hid, cout), False), ("bn3", BNSpec(cout), False)]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.hparams["expand"] != 1:
            y = F.relu6(self.bn1(self.pw(y)))
        y = F.relu6(self.bn2(self.dw(y)))
        y = self.bn3(self.pwl(y))
        return x + y if self.residual else y


@register_block("conv_k3", kernel=3, expand=0)
@register_block("conv_k5", kernel=5, expand=0)
@register_block("fir_k3_e2", kernel=3, expand=2)
@register_block("fir_k3_e4", kernel=3, expand=4)
class DenseConv(Block):
    """Dense kxk convolution blocks, the int8-friendly ones (no depthwise convs):

    * ``conv_k*`` (``expand=0``): kxk conv -> BN -> ReLU, the layer of a plain CNN;
    * ``fir_k*_e*``: fused inverted residual (EfficientNetV2's Fused-MBConv, MCUNet): kxk dense
      expansion conv to ``cin * expand`` channels -> BN -> ReLU, then 1x1 linear projection -> BN.

    Both add the input when the stride is 1 and the widths match. They nest: the plain conv is the
    first ``cout`` filters of the fused block's expansion conv (same layer name, ``conv``/``bn1``),
    so in the supernet one set of weights trains both.
    """

    def specs(self, cin, cout):
        k, e = self.hparams["kernel"], self.hparams["expand"]
        hid = cout if e == 0 else cin * e
        out: list[tuple[str, Spec, bool]] = [("conv", _conv(cin, hid, k, self.stride), False),
                                             ("bn1", BNSpec(hid), False)]
        if e != 0:
            out += [("proj", _conv(hid, cout), False), ("bn2", BNSpec(cout), False)]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv(x)))
        if self.hparams["expand"] != 0:
            y = self.bn2(self.proj(y))
        return x + y if self.residual else y


@register_block("dsc_k3", kernel=3)
@register_block("dsc_k5", kernel=5)
@register_block("dsc_k7", kernel=7)
class DepthwiseSeparable(Block):
    """MobileNetV1 depthwise-separable conv: kxk depthwise then 1x1 pointwise, both with ReLU."""

    def specs(self, cin, cout):
        k = self.hparams["kernel"]
        return [("dw", _dw(cin, k, self.stride), False), ("bn1", BNSpec(cin), False),
                ("pw", _conv(cin, cout), False), ("bn2", BNSpec(cout), False)]

    def forward(self, x):
        return F.relu(self.bn2(self.pw(F.relu(self.bn1(self.dw(x))))))


@register_block("ghost")
class Ghost(Block):
    """GhostNet-style block: half the outputs from a 1x1 conv, the rest from a cheap 3x3 depthwise
    conv over them; a 3x3 depthwise stride-2 conv in front when the layer reduces resolution."""

    def specs(self, cin, cout):
        primary = math.ceil(cout / 2)
        cheap = cout - primary
        out: list[tuple[str, Spec, bool]] = []
        if self.stride != 1:
            out += [("down", _dw(cin, 3, self.stride), False), ("bn0", BNSpec(cin), False)]
        out += [("primary", _conv(cin, primary), False), ("bn1", BNSpec(primary), False),
                ("cheap", _dw(cheap, 3), False), ("bn2", BNSpec(cheap), False)]
        return out

    def forward(self, x):
        y = self.bn0(self.down(x)) if self.stride != 1 else x
        p = F.relu(self.bn1(self.primary(y)))
        cheap_ch = self.out_ch - math.ceil(self.out_ch / 2)
        c = F.relu(self.bn2(self.cheap(p[:, :cheap_ch])))
        y = torch.cat([p, c], dim=1)
        return x + y if self.residual else y


@register_block("shuffle")
class Shuffle(Block):
    """ShuffleNetV2 two-branch unit (the down-sampling form, valid at any width and stride):
    branch 1 depthwise + 1x1, branch 2 1x1 + depthwise + 1x1, concatenated and channel-shuffled."""

    def specs(self, cin, cout):
        h1 = cout // 2
        h2 = cout - h1
        return [
            ("b1_dw", _dw(cin, 3, self.stride), False), ("b1_bn1", BNSpec(cin), False),
            ("b1_pw", _conv(cin, h1), False), ("b1_bn2", BNSpec(h1), False),
            ("b2_pw1", _conv(cin, h2), True), ("b2_bn1", BNSpec(h2), True),
            ("b2_dw", _dw(h2, 3, self.stride), False), ("b2_bn2", BNSpec(h2), False),
            ("b2_pw2", _conv(h2, h2), False), ("b2_bn3", BNSpec(h2), False),
        ]

    def forward(self, x):
        b1 = F.relu(self.b1_bn2(self.b1_pw(self.b1_bn1(self.b1_dw(x)))))
        b2 = F.relu(self.b2_bn1(self.b2_pw1(x)))
        b2 = F.relu(self.b2_bn3(self.b2_pw2(self.b2_bn2(self.b2_dw(b2)))))
        return channel_shuffle(torch.cat([b1, b2], dim=1), 2)


def build_block(token: str, cin: int, cout: int, stride: int) -> Block:
    """A block of the registered type ``token`` at its largest size (raises KeyError if unknown)."""
    return BLOCKS[token](cin, cout, stride)


def slim_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in module.named_modules():
        if isinstance(m, SLIM_TYPES):
            yield name, m


def to_static(module: nn.Module) -> nn.Module:
    """Replace every slim layer in ``module`` (in place) by its plain static twin."""
    for name, child in list(module.named_children()):
        if isinstance(child, SLIM_TYPES):
            setattr(module, name, child.to_static())
        else:
            to_static(child)
    return module
