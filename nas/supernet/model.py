"""The weight-sharing supernet and the static subnets extracted from it.

API after Once-for-All: ``set_active(genome)`` routes the forward pass through one subnet,
``sample(rng)`` draws a random genome, ``extract(genome)`` returns a :class:`Subnet` -- an ordinary
``nn.Module`` with copied weights that owns nothing of the supernet. Only subnets are exported.
Normalisation lives inside both, so models take raw pixels in [0, 1] and attacks work on pixels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..space import BLOCKS, SKIP, Genome, LayerChoices, SearchSpace, to_static
from ..space.blocks import family_block
from ..space.layers import BNSpec, ConvSpec, LinearSpec


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so exported models take [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Stem(nn.Module):
    """3x3 conv -> BN -> ReLU at the widest stem width; a subnet uses the first ``width`` filters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.stride = cin, stride
        spec = ConvSpec(cin, cout, 3, stride)
        self.conv, self.bn = spec.build(), BNSpec(cout).build()

    def set_active(self, width: int) -> None:
        self.conv.set_active(ConvSpec(self.cin, width, 3, self.stride))
        self.bn.set_active(BNSpec(width))

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Head(nn.Module):
    """Optional 1x1 conv -> BN -> ReLU to the head width, global average pool, linear classifier.

    ``widths`` are the head widths the space allows; 0 is "no head conv": the pooled features of the
    last block go straight into the classifier, as in the small hand-designed CNNs. That path has
    its own classifier (``fc_direct``): its inputs are block features, not head features, and
    sharing one weight matrix between the two meanings would make them compete.
    """

    def __init__(self, cin: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        self.cin_max, self.num_classes = cin, num_classes
        top = max(widths)
        self.width = top
        if top:
            self.conv, self.bn = ConvSpec(cin, top, 1).build(), BNSpec(top).build()
            self.fc = LinearSpec(top, num_classes).build()
        if 0 in widths:
            self.fc_direct = LinearSpec(cin, num_classes).build()

    def set_active(self, cin: int, width: int | None = None) -> None:
        """Route ``cin`` input channels through a head conv of ``width`` (default: the widest; 0: none)."""
        width = self.width if width is None else width
        if width:
            self.conv.set_active(ConvSpec(cin, width, 1))
            self.bn.set_active(BNSpec(width))
            self.fc.set_active(LinearSpec(width, self.num_classes))
        else:
            self.fc_direct.set_active(LinearSpec(cin, self.num_classes))
        self.width = width

    def drop_inactive(self) -> None:
        """Remove the path this head does not use (in an extracted subnet)."""
        for name in (("fc_direct",) if self.width else ("conv", "bn", "fc")):
            if hasattr(self, name):
                delattr(self, name)

    def forward(self, x):
        if self.width:
            x = F.relu(self.bn(self.conv(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return self.fc_direct(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Subnet(nn.Module):
    """A static network: normalise, stem, the chosen blocks in order, head. What gets exported."""

    def __init__(self, normalize: nn.Module, stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module,
                 genome: str = ""):
        super().__init__()
        self.normalize, self.stem, self.blocks, self.head = normalize, stem, nn.Sequential(*blocks), head
        self.genome = genome

    def forward(self, x):
        return self.head(self.blocks(self.stem(self.normalize(x))))


def layer_plan(space: SearchSpace) -> Iterable[tuple[LayerChoices, dict[str, list[str]], int, int]]:
    """For each searchable layer of the supernet: its choices, its block tokens by weight family (one
    shared weight tensor set each), and the widest input and output it must hold."""
    max_in = space.stem
    for lc in space.layers:
        max_out = max(lc.channels)
        families: dict[str, list[str]] = {}
        for op in lc.ops:
            if op != SKIP:
                families.setdefault(BLOCKS[op].family, []).append(op)
        yield lc, families, max_in, max_out
        # a skip layer passes its input through, so the next layer may see up to the max of both
        max_in = max(max_out, max_in) if SKIP in lc.ops else max_out


def last_width(space: SearchSpace) -> int:
    """The widest feature map the supernet's last searchable layer hands to the head."""
    width = space.stem
    for lc, _, max_in, max_out in layer_plan(space):
        width = max(max_out, max_in) if SKIP in lc.ops else max_out
    return width


def sub_supernets(space: SearchSpace) -> list[int]:
    """For each block group of ``space``, the index of its sub-supernet (stem and head owner):
    groups linked by a shared weight family fall into one, the others get one each."""
    groups = space.groups
    owner = list(range(len(groups)))

    def root(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    families = [{BLOCKS[t].family for t in g} for g in groups]
    for i in range(len(groups)):
        for j in range(i):
            if families[i] & families[j]:
                owner[root(i)] = root(j)
    roots = sorted({root(i) for i in range(len(groups))})
    return [roots.index(root(i)) for i in range(len(groups))]


class Supernet(nn.Module):
    """Every layer holds every allowed block at the layer's largest width; one path runs at a time.

    In a space with ``block_groups`` the groups form few-shot sub-supernets (:func:`sub_supernets`),
    each with its own stem and head (``stems[i]``, ``heads[i]``): groups whose blocks share a weight
    family (``conv_k3`` is the first filters of ``fir_k3``'s expansion conv) share them too, groups
    of unrelated blocks do not -- one stem and head for inverted residuals and dense blocks trained
    worse than one each, while the two dense groups trained better sharing theirs
    (``bench/bench_block_mixing.py``, BENCHMARKS.md).
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.space, self.in_channels, self.num_classes = space, in_channels, num_classes
        self.normalize = Normalize(mean, std)
        self.sub_of_group = sub_supernets(space)
        n_sub = max(self.sub_of_group) + 1
        stems = [Stem(in_channels, space.stem, space.stem_stride) for _ in range(n_sub)]
        if n_sub == 1:
            self.stem = stems[0]
        else:
            self.stems = nn.ModuleList(stems)
        self.choices = nn.ModuleList()
        max_in = space.stem
        for lc, families, max_in, max_out in layer_plan(space):
            self.choices.append(nn.ModuleDict({fam: family_block(tokens, max_in, max_out, lc.stride)
                                               for fam, tokens in families.items()}))
        max_in = last_width(space)
        heads = [Head(max_in, space.head_choices, num_classes) for _ in range(n_sub)]
        if n_sub == 1:
            self.head = heads[0]
        else:
            self.heads = nn.ModuleList(heads)
        self.active: Genome | None = None
        self._sub = 0
        self.set_active(space.largest())

    def set_active(self, genome: Genome) -> None:
        self.space.validate(genome)
        self._sub = self.sub_of_group[self.space.group_of(genome)] if self.space.block_groups else 0
        cin = self.space.stem_of(genome)
        self.active_stem().set_active(cin)
        for gene, ops in zip(genome.layers, self.choices):
            if gene.op != SKIP:
                ops[BLOCKS[gene.op].family].set_active(cin, gene.channels, gene.op)
                cin = gene.channels
        self.active_head().set_active(cin, self.space.head_of(genome))
        self.active = genome

    def active_stem(self) -> Stem:
        return self.stems[self._sub] if hasattr(self, "stems") else self.stem

    def active_head(self) -> Head:
        return self.heads[self._sub] if hasattr(self, "heads") else self.head

    def sample(self, rng: np.random.Generator) -> Genome:
        return self.space.sample(rng)

    def active_blocks(self) -> list[nn.Module]:
        return [ops[BLOCKS[g.op].family] for g, ops in zip(self.active.layers, self.choices) if g.op != SKIP]

    def forward(self, x):
        x = self.active_stem()(self.normalize(x))
        for block in self.active_blocks():
            x = block(x)
        return self.active_head()(x)

    def extract(self, genome: Genome) -> Subnet:
        """A static copy of one subnet with its weights (and BatchNorm statistics) sliced out.

        The supernet's active path is left as it was: extracting is a read, not a switch."""
        previous = self.active
        self.set_active(genome)
        try:
            parts = copy.deepcopy(nn.ModuleList([self.normalize, self.active_stem(), *self.active_blocks(),
                                                 self.active_head()]))
        finally:
            if previous is not None:
                self.set_active(previous)
        for block in parts[2:]:
            block.drop_inactive()
        to_static(parts)
        subnet = Subnet(parts[0], parts[1], list(parts[2:-1]), parts[-1], genome.encode())
        subnet.train(self.training)
        return subnet


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Initialise every layer of ``model`` afresh, in place, from ``seed`` alone: the one initialiser of
    every model trained from scratch (``nasctl finetune --from-scratch``, the baselines, the studies), so
    a from-scratch subnet and a hand-designed baseline start alike. Each layer is initialised for its own
    shape (Kaiming fan-out for convs, PyTorch's defaults for BatchNorm and the classifier); the caller's
    global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    return model


def build_subnet(space: SearchSpace, genome: Genome | str, in_channels: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0) -> Subnet:
    """A freshly initialised static subnet of ``genome`` (no supernet weights, :func:`init_weights`): for
    training from scratch and for hand-designed baselines written as genomes, so that a baseline is built
    by the same code as every searched model."""
    g = space.parse(genome) if isinstance(genome, str) else space.validate(genome)
    with torch.random.fork_rng(devices=[]):  # the supernet's own init draws leave the caller's RNG alone
        sub = Supernet(space, in_channels, num_classes, mean, std).extract(g)
    return init_weights(sub, seed).train()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor],
                   device: torch.device | str | None = None) -> int:
    """Re-estimate BatchNorm running statistics of ``model`` on a few training batches.

    Shared supernet statistics are a mixture over every sampled path, so a subnet's own statistics
    must be recomputed before it is evaluated (cumulative average, momentum=None). Returns the
    number of images seen. The model is left in eval mode. The batches go to ``device``, by default
    the model's own (a subnet extracted from a CUDA supernet lives on the GPU).
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
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


@dataclass(frozen=True)
class BNCalibration:
    """The one setting every subnet's BatchNorm statistics are recalibrated with: the search scores a
    candidate, the fine-tune stage starts from it, training checks its paths and export prepares it
    with the same images, so an exported model's statistics are the ones its front score was measured
    with. The batches are the first ``batches`` of the train split shuffled by ``seed``."""

    batches: int = 4  # 256 training images: enough for stable statistics of tiny nets, cheap per candidate
    batch_size: int = 64
    seed: int = 0

    def images(self, train) -> list[torch.Tensor]:
        """The calibration images of ``train`` (a TensorSplit), in order."""
        gen = torch.Generator().manual_seed(self.seed)
        stream = train.batches(self.batch_size, shuffle=True, generator=gen, drop_last=True)
        return [x for _, (x, _) in zip(range(self.batches), stream)]

    def image_count(self, train) -> int:
        """How many images :meth:`images` yields for ``train`` (whole batches only)."""
        return min(self.batches, len(train) // self.batch_size) * self.batch_size

    def to_dict(self) -> dict:
        return {"batches": self.batches, "batch_size": self.batch_size, "seed": self.seed, "split": "train"}


def prepare_subnet(model: nn.Module, train, calibration: BNCalibration,
                   device: torch.device | str | None = None) -> nn.Module:
    """Recalibrate an extracted subnet's BatchNorm statistics with ``calibration``; eval mode.

    The one door to a subnet's own statistics: the search's candidates, the final front, the fine-tune
    stage, supernet training's path checks, ``nasctl eval``, the Python API and export all come through
    here, so a model is always scored and shipped with the statistics of the same images
    (:func:`recalibrate_bn` is the mechanism under it)."""
    recalibrate_bn(model, calibration.images(train), device)
    return model
