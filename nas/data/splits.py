"""The data layer's ground: what a data set is (:class:`DatasetInfo`), in-memory splits
(:class:`TensorSplit`, :class:`DataSplits`) with their seeded carving, and the loader protocol every
registry entry follows. Built-in loaders (:mod:`.builtin`) and a user's own images (:mod:`.userdata`)
both build on it; the registry (:mod:`.registry`) sits above them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nasctl.errors import NasctlError

log = logging.getLogger(__name__)


DEFAULT_DATASET = "digits"

# Default size of the validation split carved from the torchvision sets' official train split; small
# train sets (e.g. the tiny files of the tests) get 10 % instead.
DEFAULT_VAL_SIZE = 5000
DIGITS_TEST_SIZE = 397  # ~22 % of 1,797, the split DESIGN.md's reference numbers were measured on
DIGITS_VAL_SIZE = 200  # leaves 1,200 to train on: 1,400 train+val like the reference split
TRAIN_SUBSET_STREAM = 1  # --train-subset draws from default_rng([seed, 1]), apart from the val carve-out


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a data set, without loading it.

    ``mean``/``std`` are per channel, of pixels in [0, 1]; the model normalises with them internally.
    ``default_eps`` is the L-inf radius (in [0, 1] pixel units) of the usual threat model for the set.
    ``classes`` names label 0, 1, ... where the set has names (empty where it has none, and in
    checkpoints written before the field existed). For a user's own images (:mod:`.userdata`) ``name``
    is the canonical ``folder:``/``npz:`` spec string, which reloads the same images.
    """

    name: str
    in_channels: int
    resolution: int  # square images: H == W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) for run configs, checkpoints and ``report.json``."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"], d["classes"] = list(self.mean), list(self.std), list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        """The inverse of :meth:`to_dict` (a checkpoint's ``dataset``); unknown keys are ignored, and a
        dict without ``classes`` (written before the field existed) loads with none."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        return cls(**{**kw, "mean": tuple(kw["mean"]), "std": tuple(kw["std"]),
                      "classes": tuple(str(c) for c in kw.get("classes", ()))})


@dataclass
class TensorSplit:
    """One split held in memory: ``images`` [N, C, H, W] and int64 ``labels`` [N].

    ``images`` is uint8 (0..255, converted per batch to save 4x memory) or float32 already in [0, 1].
    ``source_indices`` are the rows of the official split the samples came from (for digits: rows of
    ``load_digits()``); they document provenance and let tests check that splits are disjoint.
    """

    images: torch.Tensor
    labels: torch.Tensor
    source_indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32 in [0, 1], got {self.images.dtype}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {self.images.shape[0]}, got shape {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {self.labels.dtype}")
        if self.source_indices is not None and self.source_indices.shape != self.labels.shape:
            raise ValueError("source_indices must have one entry per sample")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _as_float(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            return images.to(torch.float32).div_(255.0)
        return images

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: x float32 [B, C, H, W] in [0, 1], y int64 [B], on the images' device.

        One call is one epoch. ``shuffle`` draws the order from ``generator`` (a CPU generator; without
        one torch's default generator is used, like DataLoader). With ``world_size > 1`` rank ``r`` gets
        ``order[r::world_size]``: shards are disjoint and together cover every sample once. Every rank
        must pass an identically seeded generator, and every rank yields the same number of batches
        (collective ops would hang otherwise): with ``drop_last=False`` that is ceil(shortest shard /
        batch_size) batches, and where N is not a multiple of world_size the ranks with one extra
        sample put it into their last batch (batch_size + 1 samples at most). With ``drop_last=True``
        every batch has exactly ``batch_size`` samples and the rest is skipped.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n = len(self)
        if world_size > 1 and shuffle and generator is None:
            raise ValueError("sharded shuffling needs a generator seeded identically on every rank")
        if world_size > 1 and not drop_last and n < world_size:
            raise ValueError(f"cannot shard {n} samples over {world_size} ranks without empty shards")
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        shard = order[rank::world_size]
        shortest = n // world_size
        if drop_last:
            num_batches = shortest // batch_size
        else:
            num_batches = math.ceil(shortest / batch_size)
        device = self.images.device
        for b in range(num_batches):
            start = b * batch_size
            last = b == num_batches - 1
            stop = len(shard) if last and not drop_last else start + batch_size
            idx = shard[start:stop].to(device)
            yield self._as_float(self.images[idx]), self.labels[idx]

    def subset(self, n_or_indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> TensorSplit:
        """The first ``n`` samples (all of them if ``n >= len``), or the samples at the given indices.

        ``val`` (and all digits splits) are stored in seeded random order, so their first ``n`` are a
        fixed random sample: the search's cheap proxy evaluates on ``splits.val.subset(1000)``. The
        torchvision test splits keep the official file order.
        """
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if n < 0:
                raise ValueError(f"subset size must be >= 0, got {n}")
            idx = torch.arange(min(n, len(self)))
        elif isinstance(n_or_indices, torch.Tensor):
            idx = n_or_indices.detach().to("cpu", torch.int64).reshape(-1)
        else:
            idx = torch.as_tensor(np.asarray(n_or_indices), dtype=torch.int64).reshape(-1)
        src = None if self.source_indices is None else self.source_indices[idx]
        dev = self.images.device
        return TensorSplit(self.images[idx.to(dev)], self.labels[idx.to(self.labels.device)], src)

    def numpy_images(self) -> np.ndarray:
        """All images as float32 [N, C, H, W] in [0, 1] (for calibration data, sklearn, attacks)."""
        # np.array copies: float32 images on the CPU would otherwise share memory with the split
        return np.array(self._as_float(self.images.detach().cpu()).numpy(), dtype=np.float32)


@dataclass
class DataSplits:
    """A data set ready to use: its description and the three splits.

    ``val`` comes from the official train split (seeded); model selection uses it, never ``test``.
    """

    info: DatasetInfo
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit


class DatasetLoader(Protocol):
    """A registry entry: knows its :class:`DatasetInfo`, the built-in space made for its images, and
    loads the splits."""

    info: DatasetInfo
    default_space: str

    def __call__(
        self, data_dir: str | os.PathLike | None, seed: int, val_size: int | None, download: bool
    ) -> DataSplits: ...


def _carve(n: int, n_held_out: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded permutation of ``range(n)`` cut into (held out, rest); both keep the random order."""
    if not 0 <= n_held_out < n:
        raise NasctlError(
            f"{what} must be between 0 and {n - 1} (the split has {n} samples), got {n_held_out}; "
            "pass a smaller --val-size"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_held_out], perm[n_held_out:]


def _split(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> TensorSplit:
    t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    return TensorSplit(images[t].contiguous(), labels[t].contiguous(), t)


def official_splits(info: DatasetInfo, root: Path, train_images: torch.Tensor, train_labels: torch.Tensor,
                    test_images: torch.Tensor, test_labels: torch.Tensor, seed: int,
                    val_size: int | None) -> DataSplits:
    """Train / val / test of a set that ships an official train and test split: val is carved from
    train with the seed (default 5,000 images, 10 % of small train sets), test keeps the file order."""
    n_train = len(train_labels)
    v = min(DEFAULT_VAL_SIZE, max(1, n_train // 10)) if val_size is None else val_size
    val_idx, train_idx = _carve(n_train, v, seed, f"val size for {info.name}")
    splits = DataSplits(
        info,
        _split(train_images, train_labels, train_idx),
        _split(train_images, train_labels, val_idx),
        _split(test_images, test_labels, np.arange(len(test_labels))),
    )
    log.info("loaded %s from %s: train %d, val %d, test %d", info.name, root, len(splits.train),
             len(splits.val), len(splits.test))
    return splits


def class_balanced_indices(labels: torch.Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random row indices of ``labels`` with the classes as equal as the split allows.

    Each class is shuffled by ``rng`` and the classes take turns (every class's first sample, in a
    random order, then every class's second, ...), so class counts differ by at most one until a class
    runs out, and the first ``m`` of the indices for ``n`` are those for ``m`` (same generator state).
    """
    y = labels.detach().cpu().numpy()
    perm = rng.permutation(len(y))
    rank = np.zeros(len(y), dtype=np.int64)  # rank of perm[i] within its class, in the seeded order
    for c in np.unique(y):
        at = np.flatnonzero(y[perm] == c)
        rank[at] = np.arange(len(at))
    order = np.lexsort((np.arange(len(y)), rank))  # by rank; ties in the seeded (random) order
    return perm[order[:n]]


def first_test_images(splits: DataSplits, n: int | None) -> DataSplits:
    """``splits`` with only the first ``n`` test images (None or 0: the whole test split): a search
    run's ``test_size``, which its front, its fine-tuned members and every later re-scoring share."""
    return dataclasses.replace(splits, test=splits.test.subset(int(n))) if n else splits


def subset_train(splits: DataSplits, n: int | None, seed: int) -> DataSplits:
    """``splits`` with a seeded, class-balanced subset of ``n`` training images (None: unchanged).

    For CPU budgets (``--train-subset``): val and test stay whole. Raises :class:`NasctlError` when
    ``n`` is not positive or larger than the training split (what is left once val is carved out).
    """
    if n is None:
        return splits
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise NasctlError(f"--train-subset must be a positive number of training images, got {n!r}")
    have = len(splits.train)
    if n > have:
        raise NasctlError(
            f"--train-subset {n:,} is larger than the {splits.info.name} training split ({have:,} images "
            f"once the {len(splits.val):,} validation images are carved out): pass at most {have:,}, or "
            "leave it out to train on all of them"
        )
    # a stream of its own: not the val carve-out's permutation, which default_rng(seed) draws
    rng = np.random.default_rng([seed, TRAIN_SUBSET_STREAM])
    idx = class_balanced_indices(splits.train.labels, int(n), rng)
    log.info("training on a class-balanced subset of %d of %d images (seed %d)", n, have, seed)
    return DataSplits(splits.info, splits.train.subset(idx), splits.val, splits.test)
