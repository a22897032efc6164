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
torchvision's own classes read, under ``data_dir``, downloading them if allowed. ``fashion-mnist``
is read from its four idx files by nasctl's own strict reader: without ``data_dir`` where Debian's
``dataset-fashion-mnist`` package installs them (``/usr/share/datasets/fashion-mnist/``, in place).
For CPU budgets, :func:`subset_train` keeps a seeded, class-balanced subset of the training split.

A user's own images are named like a built-in set: ``folder:DIR`` (a folder of class folders) or
``npz:FILE`` (arrays), with options inside the name (``folder:/data/pets?image_size=64``, made by
:func:`dataset_spec`); :mod:`.userdata` reads them, and every function here takes those names.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.error import URLError

import numpy as np
import torch

from nasctl.core import did_you_mean
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


def _official_splits(info: DatasetInfo, root: Path, train_images: torch.Tensor, train_labels: torch.Tensor,
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


@dataclass(frozen=True)
class DigitsLoader:
    """scikit-learn's bundled 8x8 digits: 1,797 images, no download, the default for quick runs.

    Pixel values 0..16 are divided by 16 (float32). Test (397), val (default 200) and train (the rest)
    all come from one seeded permutation: the same seed gives identical splits.
    """

    info: DatasetInfo
    default_space: str = "digits"  # 8x8 inputs: the space whose range holds the small hand-designed CNNs

    def __call__(self, data_dir: str | os.PathLike | None, seed: int, val_size: int | None,
                 download: bool) -> DataSplits:
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
    default_space: str = "tam"  # TAM-NAS's space for 32x32 inputs

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

    def __call__(self, data_dir: str | os.PathLike | None, seed: int, val_size: int | None,
                 download: bool) -> DataSplits:
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
        return _official_splits(self.info, root, train_images, train_labels, test_images, test_labels, seed,
                                val_size)

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


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes: the only one the MNIST-style files use


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def read_idx(path: Path, ndim: int, fix: str) -> np.ndarray:
    """One idx file (``.gz`` or not) as a uint8 array of ``ndim`` dimensions, checked strictly.

    The idx format: two zero bytes, the type code (0x08: unsigned byte), the number of dimensions, one
    big-endian uint32 per dimension, then the values. A file that cannot be decompressed, whose magic
    number is not that of a ``ndim``-dimensional byte array, or whose size is not exactly header +
    product of the dimensions (truncated or padded) raises :class:`NasctlError` naming the file and
    ending with ``fix``.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # other OSErrors (permissions) are the CLI's
        raise NasctlError(f"{path} could not be read, it is truncated or corrupted ({type(exc).__name__}: "
                          f"{_one_line(exc)}); {fix}") from exc
    header = 4 + 4 * ndim
    want_magic = (_IDX_UBYTE << 8) | ndim
    if len(raw) < header:
        raise NasctlError(f"{path} is {len(raw)} bytes, shorter than its idx header ({header} bytes): it is "
                          f"truncated; {fix}")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != want_magic:
        raise NasctlError(f"{path} is not an idx file of {ndim}-dimensional unsigned bytes (magic number "
                          f"{magic:#010x}, expected {want_magic:#010x}); {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = math.prod(dims)
    if len(raw) - header != size:
        what = "truncated" if len(raw) - header < size else "longer than its header says"
        raise NasctlError(f"{path} holds {len(raw) - header:,} bytes of data but its header "
                          f"({' x '.join(map(str, dims))}) promises {size:,}: the file is {what}; {fix}")
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class IdxLoader:
    """An MNIST-style set read from its four idx files (``.gz`` or not) by nasctl's own strict reader.

    Where the files are looked for: without ``data_dir``, in ``system_dir``, where a system package
    installs them (read in place, never copied); with ``data_dir``, flat in it (the layout of the
    original download and of the package) or in torchvision's ``<data_dir>/<torchvision_folder>/raw/``.
    When none is there and ``download`` is allowed, torchvision's ``dataset_class`` downloads them
    (md5-checked) into the torchvision layout. Val is carved from train with the seed, as for the
    torchvision sets, and test keeps the file order.
    """

    info: DatasetInfo
    system_dir: str  # where ``package`` installs the files
    package: str  # the Debian package that installs them
    torchvision_folder: str  # <data_dir>/<folder>/raw/, where torchvision keeps them
    dataset_class: str  # torchvision.datasets class that downloads them
    source: str  # where the original files are published
    default_space: str = "mnist"  # 28x28 inputs: a stride-2 stem keeps PGD training within CPU budgets

    def _expected(self, root: str) -> str:
        return (f"{root}/{{{','.join(f + '.gz' for f in IDX_FILES)}}} (as {self.source} publishes them and "
                f"Debian's {self.package} installs them; gunzipped files too) or the same files in "
                f"{Path(root) / self.torchvision_folder / 'raw'}/ (torchvision's layout)")

    def locate(self, root: Path) -> dict[str, Path] | None:
        """The four files in ``root`` or in torchvision's layout under it (uncompressed preferred)."""
        for folder in (root, root / self.torchvision_folder / "raw"):
            found = {}
            for name in IDX_FILES:
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        found[name] = candidate
                        break
            if len(found) == len(IDX_FILES):
                return found
        return None

    def _download(self, root: Path) -> None:
        import torchvision.datasets as tvd

        name, expected = self.info.name, self._expected(str(root))
        try:  # the constructor downloads all four files, then loads the (small) test split
            getattr(tvd, self.dataset_class)(root=str(root), train=False, download=True)
        except (URLError, OSError, RuntimeError) as exc:
            raise NasctlError(
                f"could not download the {name} data set into {root} (offline?); place the files by hand "
                f"and rerun: {expected}; or apt-get install {self.package} and leave out --data-dir "
                f"(torchvision: {_one_line(exc)})"
            ) from exc

    def __call__(self, data_dir: str | os.PathLike | None, seed: int, val_size: int | None,
                 download: bool) -> DataSplits:
        name = self.info.name
        if data_dir is None:
            root = Path(self.system_dir)
            files = self.locate(root)
            if files is None:
                raise NasctlError(
                    f"the {name} data set needs its four idx files: install them with "
                    f"apt-get install {self.package} (Debian; read in place from {root}/) or pass "
                    f"--data-dir DIR (it reads {self._expected('DIR')}; downloaded there when online)"
                )
            fix = f"reinstall the package: apt-get install --reinstall {self.package}"
        else:
            root = Path(data_dir).expanduser()
            files = self.locate(root)
            if files is None and download:
                self._download(root)
                files = self.locate(root)
            if files is None:
                raise NasctlError(
                    f"the {name} data set was not found in {root}: expected {self._expected(str(root))}; "
                    f"place the files there, allow the download, or apt-get install {self.package} and "
                    "leave out --data-dir"
                )
            fix = f"replace it with the original file ({self.source}, or Debian's {self.package})"
        train = self._pair(files, "train", fix)
        test = self._pair(files, "t10k", fix)
        return _official_splits(self.info, root, *train, *test, seed, val_size)

    def _pair(self, files: dict[str, Path], prefix: str, fix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, 1, H, W] uint8 and labels [N] int64 of one split, checked against each other."""
        info = self.info
        images_path, labels_path = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images = read_idx(images_path, 3, fix)
        labels = read_idx(labels_path, 1, fix)
        if images.shape[1:] != (info.resolution, info.resolution):
            raise NasctlError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, "
                              f"{info.name}'s are {info.resolution}x{info.resolution}; {fix}")
        if len(labels) != len(images):
            raise NasctlError(f"{labels_path} holds {len(labels):,} labels but {images_path} holds "
                              f"{len(images):,} images: both must come from the same split; {fix}")
        if len(labels) and int(labels.max()) >= info.num_classes:
            raise NasctlError(f"{labels_path} holds label {int(labels.max())}, {info.name} has classes "
                              f"0..{info.num_classes - 1}; {fix}")
        return (torch.from_numpy(images).unsqueeze(1).contiguous(),
                torch.from_numpy(labels.astype(np.int64)))


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_MNIST_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"
)

_DIGIT_NAMES = tuple(str(d) for d in range(10))
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


def _cifar(name: str, classes: int, mean: tuple[float, ...], std: tuple[float, ...],
           holding: str, names: tuple[str, ...] = ()) -> TorchvisionLoader:
    """CIFAR-10 and CIFAR-100: the same torchvision layout and offline instructions, other files."""
    number = name.removeprefix("cifar")
    archive = f"cifar-{number}-python.tar.gz"
    return TorchvisionLoader(
        DatasetInfo(name, 3, 32, classes, mean, std, default_eps=8 / 255, classes=names),
        dataset_class=f"CIFAR{number}",
        split_arg="train",
        layout="NHWC",
        expected="{root}/" + holding + f" (the extracted 'CIFAR-{number} python version' archive {archive} "
        f"from {_CIFAR_URL}; md5-checked, or put the .tar.gz itself in {{root}} and allow the download)",
    )


_LOADERS: tuple[DatasetLoader, ...] = (
    DigitsLoader(
        # mean/std of load_digits().images / 16 over all 1,797 images (computed once, hardcoded)
        DatasetInfo("digits", 1, 8, 10, (0.3053,), (0.3760,), default_eps=0.1, classes=_DIGIT_NAMES),
    ),
    _cifar("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
           "cifar-10-batches-py/ holding data_batch_1..data_batch_5, test_batch and batches.meta",
           _CIFAR10_NAMES),
    _cifar("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
           "cifar-100-python/ holding train, test and meta"),
    TorchvisionLoader(
        DatasetInfo(
            "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), default_eps=8 / 255,
            classes=_DIGIT_NAMES,  # torchvision maps SVHN's label 10 (the digit 0) to 0
        ),
        dataset_class="SVHN",
        split_arg="split",
        layout="NCHW",
        expected="{root}/train_32x32.mat and {root}/test_32x32.mat (SVHN format 2, cropped digits, from "
        "http://ufldl.stanford.edu/housenumbers/; md5-checked)",
    ),
    TorchvisionLoader(
        DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), default_eps=0.3, classes=_DIGIT_NAMES),
        dataset_class="MNIST",
        split_arg="train",
        layout="NHW",
        expected="{root}/MNIST/raw/ holding " + _MNIST_FILES + " (the four MNIST .gz files, gunzipped)",
        default_space="mnist",
    ),
    IdxLoader(
        DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), default_eps=0.1,
                    classes=_FASHION_NAMES),
        system_dir="/usr/share/datasets/fashion-mnist",
        package="dataset-fashion-mnist",
        torchvision_folder="FashionMNIST",
        dataset_class="FashionMNIST",
        source="https://github.com/zalandoresearch/fashion-mnist",
    ),
)

# Registry: data set name -> loader (``DATASETS[name](data_dir, seed, val_size, download)``).
DATASETS: dict[str, DatasetLoader] = {loader.info.name: loader for loader in _LOADERS}


def dataset_names() -> list[str]:
    """Registered names, the default (``digits``) first; e.g. for argparse ``choices``."""
    return list(DATASETS)


Progress = Callable[[int, int], None]  # progress(images decoded, images in all): a user folder's decoding


def _lookup(name: str, progress: Progress | None = None) -> DatasetLoader:
    from . import userdata

    if userdata.is_user_spec(name):
        return userdata.user_loader(name, progress)
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    hint = did_you_mean(key, dataset_names())
    raise NasctlError(f"unknown data set {name!r}{hint} (known: {', '.join(dataset_names())}; your own "
                      "images: folder:DIR or npz:FILE)")


def dataset_spec(name: str, image_size: int | None = None, channels: int | None = None,
                 test_fraction: float | None = None, skip_bad_images: bool = False) -> str:
    """The canonical data set name stored in configs: a built-in name unchanged, a ``folder:``/``npz:``
    name with an absolute path and these options in it (see :func:`.userdata.dataset_spec`)."""
    from .userdata import dataset_spec as spec

    return spec(name, image_size, channels, test_fraction, skip_bad_images)


def default_space(name: str) -> str:
    """The built-in search space a data set's supernet uses when no ``--space`` is given (``auto`` for
    a user's own images); reads no files."""
    return _lookup(name).default_space


def dataset_info(name: str, progress: Progress | None = None) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered set, without loading any data. A user's folder is
    decoded the first time (``progress`` hears of it) and cached; later calls read the cached info."""
    return _lookup(name, progress).info


def supernet_data(train_config: dict, data_dir: str | os.PathLike | None = None, fallback_seed: int = 0,
                  download: bool = True, progress: Progress | None = None) -> DataSplits:
    """The splits a supernet was trained on, from its training config: the same data set, seed (so the
    same val carve-out), validation size and training subset. The search, the fine-tune stage and
    ``nasctl finetune`` all train and score on exactly these images."""
    seed = int(train_config.get("seed", fallback_seed))
    data = load_dataset(train_config.get("dataset", DEFAULT_DATASET), data_dir, seed=seed,
                        val_size=train_config.get("val_size"), download=download, progress=progress)
    return subset_train(data, train_config.get("train_subset"), seed)


def load_dataset(
    name: str = DEFAULT_DATASET,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_size: int | None = None,
    download: bool = True,
    progress: Progress | None = None,
) -> DataSplits:
    """Load a registered data set into memory as train / val / test :class:`TensorSplit`s.

    ``seed`` fixes the val carve-out (and, for digits, the whole split): same seed, same splits.
    ``val_size`` defaults to 200 for digits and to 5,000 (10 % of small train sets) otherwise.
    ``data_dir`` is required for the torchvision sets; with ``download`` they are fetched when missing.
    ``fashion-mnist`` without ``data_dir`` reads Debian's ``dataset-fashion-mnist`` files in place.
    ``folder:DIR`` and ``npz:FILE`` load a user's own images (:mod:`.userdata`; ``data_dir`` is not used,
    the name holds the path); ``progress(done, total)`` hears of a folder's decoding.
    Raises :class:`NasctlError` (one line saying what to do) for unknown names, a missing ``data_dir``
    and files that are absent, corrupted or cannot be downloaded.
    """
    return _lookup(name, progress)(data_dir=data_dir, seed=seed, val_size=val_size, download=download)
