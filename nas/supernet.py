"""The weight-sharing supernet and the static subnets extracted from it.

API after Once-for-All: ``set_active(genome)`` routes the forward pass through one subnet,
``sample(rng)`` draws a random genome, ``extract(genome)`` returns a :class:`Subnet` -- an ordinary
``nn.Module`` with copied weights that owns nothing of the supernet. Only subnets are exported.
Normalisation lives inside both, so models take raw pixels in [0, 1] and attacks work on pixels.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .space import BLOCKS, SKIP, Genome, SearchSpace, to_static
from .space.blocks import family_block
from .space.layers import BNSpec, ConvSpec


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so exported models take [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        spec = ConvSpec(cin, cout, 3, stride)
        self.conv, self.bn = spec.build(), BNSpec(cout).build()

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Head(nn.Module):
    """1x1 conv to the head width, global average pool, linear classifier."""

    def __init__(self, cin: int, width: int, num_classes: int):
        super().__init__()
        self.width = width
        self.conv, self.bn = ConvSpec(cin, width, 1).build(), BNSpec(width).build()
        self.fc = nn.Linear(width, num_classes)

    def set_active(self, cin: int) -> None:
        self.conv.set_active(ConvSpec(cin, self.width, 1))

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Subnet(nn.Module):
    """A static network: normalise, stem, the chosen blocks in order, head. What gets exported."""

    def __init__(self, normalize: nn.Module, stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module,
                 genome: str = ""):
        super().__init__()
        self.normalize, self.stem, self.blocks, self.head = normalize, stem, nn.Sequential(*blocks), head
        self.genome = genome

    def forward(self, x):
        return self.head(self.blocks(self.stem(self.normalize(x))))


class Supernet(nn.Module):
    """Every layer holds every allowed block at the layer's largest width; one path runs at a time."""

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        self.normalize = Normalize(mean, std)
        self.stem = Stem(in_channels, space.stem, space.stem_stride)
        self.choices = nn.ModuleList()
        max_in = space.stem
        for lc in space.layers:
            max_out = max(lc.channels)
            families: dict[str, list[str]] = {}
            for op in lc.ops:
                if op != SKIP:
                    families.setdefault(BLOCKS[op].family, []).append(op)
            self.choices.append(nn.ModuleDict({fam: family_block(tokens, max_in, max_out, lc.stride)
                                               for fam, tokens in families.items()}))
            # a skip layer passes its input through, so the next layer may see up to the max of both
            max_in = max(max_out, max_in) if SKIP in lc.ops else max_out
        self.head = Head(max_in, space.head, num_classes)
        self.active: Genome | None = None
        self.set_active(space.largest())

    def set_active(self, genome: Genome) -> None:
        self.space.validate(genome)
        cin = self.space.stem
        for gene, ops in zip(genome.layers, self.choices):
            if gene.op != SKIP:
                ops[BLOCKS[gene.op].family].set_active(cin, gene.channels, gene.op)
                cin = gene.channels
        self.head.set_active(cin)
        self.active = genome

    def sample(self, rng: np.random.Generator) -> Genome:
        return self.space.sample(rng)

    def active_blocks(self) -> list[nn.Module]:
        return [ops[BLOCKS[g.op].family] for g, ops in zip(self.active.layers, self.choices) if g.op != SKIP]

    def forward(self, x):
        x = self.stem(self.normalize(x))
        for block in self.active_blocks():
            x = block(x)
        return self.head(x)

    def extract(self, genome: Genome) -> Subnet:
        """A static copy of one subnet with its weights (and BatchNorm statistics) sliced out."""
        self.set_active(genome)
        parts = copy.deepcopy(nn.ModuleList([self.normalize, self.stem, *self.active_blocks(), self.head]))
        for block in parts[2:-1]:
            block.drop_inactive()
        to_static(parts)
        subnet = Subnet(parts[0], parts[1], list(parts[2:-1]), parts[-1], genome.encode())
        subnet.train(self.training)
        return subnet


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor],
                   device: torch.device | str = "cpu") -> int:
    """Re-estimate BatchNorm running statistics of ``model`` on a few training batches.

    Shared supernet statistics are a mixture over every sampled path, so a subnet's own statistics
    must be recomputed before it is evaluated (cumulative average, momentum=None). Returns the
    number of images seen. The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    for x in batches:
        model(x.to(device))
        seen += len(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return seen
