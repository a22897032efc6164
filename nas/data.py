"""Data sets as in-memory tensors, split into train / val / test with a seed.

Why in memory: every set nasctl supports fits in RAM as uint8 (CIFAR-10 train is 150 MB), and the
search trains and attacks thousands of subnets; an in-memory tensor with its own batch iterator avoids
DataLoader worker start-up and per-sample PIL decoding on small machines.

Pixels stay raw: the loader yields float32 in [0, 1] and never normalises. Normalisation
(:attr:`DatasetInfo.mean`, :attr:`DatasetInfo.std`) happens inside the model, so exported models take
pixels and attacks perturb pixels with the ε of :attr:`DatasetInfo.default_eps`.

``val`` is carved from the official training split with the seed; the search selects on it and never
sees ``test``. Use::

    splits = load_dataset("digits", seed=0)
    for x, y in splits.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...

``digits`` (scikit-learn's bundled 8x8 set) needs no files. The torchvision sets read the files
torchvision's own classes read, under ``data_dir``, downloading them if allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.error import URLError

import numpy as np
import torch

from nasctl.core import did_you_mean

from .errors import NasctlError

log = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"

# Default size of the validation split carved from the torchvision sets' official train split; small
# train sets (e.g. the tiny files of the tests) get 10 % instead.
DEFAULT_VAL_SIZE = 5000
DIGITS_TEST_SIZE = 397  # ~22 % of 1,797, the split DESIGN.md's reference numbers were measured on
DIGITS_VAL_SIZE = 200  # leaves 1,200 to train on: 1,400 train+val like the reference split


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a data set, without loading it.

    ``mean``/``std`` are per channel, of pixels in [0, 1]; the model normalises with them internally.
    ``default_eps`` is the L-inf radius (in [0, 1] pixel units) of the usual threat model for the set.
    """

    name: str
    in_channels: int
    resolution: int  # square images: H == W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) for run configs, checkpoints and ``report.json``."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


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
    """A registry entry: knows its :class:`DatasetInfo` and loads the splits."""

    info: DatasetInfo

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


@dataclass(frozen=True)
class DigitsLoader:
    """scikit-learn's bundled 8x8 digits: 1,797 images, no download, the default for quick runs.

    Pixel values 0..16 are divided by 16 (float32). Test (397), val (default 200) and train (the rest)
    all come from one seeded permutation: the same seed gives identical splits.
    """

    info: DatasetInfo

    def __call__(
        self,
        data_dir: str | os.PathLike | None = None,
        seed: int = 0,
        val_size: int | None = None,
        download: bool = True,
    ) -> DataSplits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        n = len(labels)
        test_idx, rest = _carve(n, DIGITS_TEST_SIZE, seed, "the digits test size")
        v = DIGITS_VAL_SIZE if val_size is None else val_size
        if not 0 <= v < len(rest):
            raise NasctlError(
                f"val size for digits must be between 0 and {len(rest) - 1}, got {v}; "
                f"pass a smaller --val-size"
            )
        val_idx, train_idx = rest[:v], rest[v:]
        return DataSplits(
            self.info,
            _split(images, labels, train_idx),
            _split(images, labels, val_idx),
            _split(images, labels, test_idx),
        )


Layout = Literal["NHWC", "NCHW", "NHW"]


@dataclass(frozen=True)
class TorchvisionLoader:
    """A torchvision data set read from ``data_dir`` in the files torchvision expects there.

    ``dataset_class`` names the class in ``torchvision.datasets``; ``split_arg`` says whether it takes
    ``train=True/False`` or ``split="train"/"test"``; ``layout`` is how its ``.data`` is stored;
    ``expected`` describes (with ``{root}``) what must be in ``data_dir`` so that a user without
    network access can place the files by hand.
    """

    info: DatasetInfo
    dataset_class: str
    split_arg: Literal["train", "split"]
    layout: Layout
    expected: str

    def _open(self, root: Path, train: bool, download: bool) -> Any:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_class)
        if self.split_arg == "train":
            return cls(root=str(root), train=train, download=download)
        return cls(root=str(root), split="train" if train else "test", download=download)

    def _tensors(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        data = ds.data
        images = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
        if self.layout == "NHWC":  # CIFAR stores HWC (for PIL); models want CHW
            images = images.permute(0, 3, 1, 2)
        elif self.layout == "NHW":
            images = images.unsqueeze(1)
        raw_labels = ds.targets if hasattr(ds, "targets") else ds.labels
        labels = torch.as_tensor(np.asarray(raw_labels), dtype=torch.int64).reshape(-1)
        return images.to(torch.uint8).contiguous(), labels

    def __call__(
        self,
        data_dir: str | os.PathLike | None = None,
        seed: int = 0,
        val_size: int | None = None,
        download: bool = True,
    ) -> DataSplits:
        name = self.info.name
        if data_dir is None:
            raise NasctlError(
                f"the {name} data set needs a folder for its files: pass --data-dir DIR "
                f"(it reads {self.expected.format(root='DIR')})"
            )
        root = Path(data_dir).expanduser()
        expected = self.expected.format(root=root)
        try:
            train_ds = self._open(root, train=True, download=download)
            test_ds = self._open(root, train=False, download=download)
        except (URLError, OSError, RuntimeError) as exc:
            # torchvision's MNIST joins one error per mirror over several lines; the last is the cause
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            said = lines[-1] if lines else type(exc).__name__
            if download:
                msg = (
                    f"could not download the {name} data set into {root} (offline?); place the files by "
                    f"hand and rerun: {expected} (torchvision: {said})"
                )
            else:
                msg = (
                    f"the {name} data set was not found (or is corrupted) in {root}: expected {expected}; "
                    "place the files there or allow the download"
                )
            raise NasctlError(msg) from exc
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AssertionError) as exc:
            raise NasctlError(
                f"the {name} files in {root} could not be read ({type(exc).__name__}: {exc}); "
                f"replace them with the original files: {expected}"
            ) from exc

        train_images, train_labels = self._tensors(train_ds)
        test_images, test_labels = self._tensors(test_ds)
        self._check(root, train_images, train_labels)
        self._check(root, test_images, test_labels)

        n_train = len(train_labels)
        v = min(DEFAULT_VAL_SIZE, max(1, n_train // 10)) if val_size is None else val_size
        val_idx, train_idx = _carve(n_train, v, seed, f"val size for {name}")
        test_idx = np.arange(len(test_labels))
        splits = DataSplits(
            self.info,
            _split(train_images, train_labels, train_idx),
            _split(train_images, train_labels, val_idx),
            _split(test_images, test_labels, test_idx),
        )
        log.info(
            "loaded %s from %s: train %d, val %d, test %d",
            name,
            root,
            len(splits.train),
            len(splits.val),
            len(splits.test),
        )
        return splits

    def _check(self, root: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Fail with the fix when the files hold something else than this data set."""
        info = self.info
        want = (info.in_channels, info.resolution, info.resolution)
        if tuple(images.shape[1:]) != want or len(labels) != len(images):
            raise NasctlError(
                f"the files in {root} do not hold {info.name}: images {tuple(images.shape)}, labels "
                f"{len(labels)}, expected [N, {', '.join(map(str, want))}] images with N labels; "
                f"replace them with {self.expected.format(root=root)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise NasctlError(
                f"the {info.name} labels in {root} fall outside 0..{info.num_classes - 1}; "
                f"replace the files with {self.expected.format(root=root)}"
            )


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_MNIST_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"
)

_LOADERS: tuple[DatasetLoader, ...] = (
    DigitsLoader(
        # mean/std of load_digits().images / 16 over all 1,797 images (computed once, hardcoded)
        DatasetInfo("digits", 1, 8, 10, (0.3053,), (0.3760,), default_eps=0.1),
    ),
    TorchvisionLoader(
        DatasetInfo(
            "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), default_eps=8 / 255
        ),
        dataset_class="CIFAR10",
        split_arg="train",
        layout="NHWC",
        expected="{root}/cifar-10-batches-py/ holding data_batch_1..data_batch_5, test_batch "
        "and batches.meta "
        f"(the extracted 'CIFAR-10 python version' archive cifar-10-python.tar.gz from {_CIFAR_URL}; "
        "md5-checked, or put the .tar.gz itself in {root} and allow the download)",
    ),
    TorchvisionLoader(
        DatasetInfo(
            "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), default_eps=8 / 255
        ),
        dataset_class="CIFAR100",
        split_arg="train",
        layout="NHWC",
        expected="{root}/cifar-100-python/ holding train, test and meta "
        f"(the extracted 'CIFAR-100 python version' archive cifar-100-python.tar.gz from {_CIFAR_URL}; "
        "md5-checked, or put the .tar.gz itself in {root} and allow the download)",
    ),
    TorchvisionLoader(
        DatasetInfo(
            "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), default_eps=8 / 255
        ),
        dataset_class="SVHN",
        split_arg="split",
        layout="NCHW",
        expected="{root}/train_32x32.mat and {root}/test_32x32.mat (SVHN format 2, cropped digits, from "
        "http://ufldl.stanford.edu/housenumbers/; md5-checked)",
    ),
    TorchvisionLoader(
        DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), default_eps=0.3),
        dataset_class="MNIST",
        split_arg="train",
        layout="NHW",
        expected="{root}/MNIST/raw/ holding " + _MNIST_FILES + " (the four MNIST .gz files, gunzipped)",
    ),
    TorchvisionLoader(
        DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), default_eps=0.1),
        dataset_class="FashionMNIST",
        split_arg="train",
        layout="NHW",
        expected="{root}/FashionMNIST/raw/ holding "
        + _MNIST_FILES
        + " (the four .gz files from https://github.com/zalandoresearch/fashion-mnist, gunzipped)",
    ),
)

# Registry: data set name -> loader (``DATASETS[name](data_dir, seed, val_size, download)``).
DATASETS: dict[str, DatasetLoader] = {loader.info.name: loader for loader in _LOADERS}


def dataset_names() -> list[str]:
    """Registered names, the default (``digits``) first; e.g. for argparse ``choices``."""
    return list(DATASETS)


def _lookup(name: str) -> DatasetLoader:
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    hint = did_you_mean(key, dataset_names())
    raise NasctlError(f"unknown data set {name!r}{hint} (known: {', '.join(dataset_names())})")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered set, without loading any data."""
    return _lookup(name).info


def load_dataset(
    name: str = DEFAULT_DATASET,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_size: int | None = None,
    download: bool = True,
) -> DataSplits:
    """Load a registered data set into memory as train / val / test :class:`TensorSplit`s.

    ``seed`` fixes the val carve-out (and, for digits, the whole split): same seed, same splits.
    ``val_size`` defaults to 200 for digits and to 5,000 (10 % of small train sets) otherwise.
    ``data_dir`` is required for the torchvision sets; with ``download`` they are fetched when missing.
    Raises :class:`NasctlError` (one line saying what to do) for unknown names, a missing ``data_dir``
    and files that are absent, corrupted or cannot be downloaded.
    """
    return _lookup(name)(data_dir=data_dir, seed=seed, val_size=val_size, download=download)
