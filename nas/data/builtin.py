"""The built-in data sets' loaders: scikit-learn's digits, the torchvision sets (files torchvision reads,
downloaded when allowed) and the MNIST-family idx files read by nasctl's own strict reader (Fashion-MNIST
from Debian's ``dataset-fashion-mnist`` package in place).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError

import numpy as np
import torch

from nasctl.errors import NasctlError

from .splits import (
    DIGITS_TEST_SIZE,
    DIGITS_VAL_SIZE,
    DatasetInfo,
    DatasetLoader,
    DataSplits,
    _carve,
    _split,
    official_splits,
)

log = logging.getLogger(__name__)


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
    # 32x32 inputs get the rule-built space a user's 32x32 folder gets (issue 25: its fine-tuned front beat
    # 12 of 12 hand-designed CNNs on 32x32 RGB images, BENCHMARKS.md); TAM-NAS's mixed depthwise space
    # stays available as --space tam, never trained on real images here
    default_space: str = "auto"

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
        return official_splits(self.info, root, train_images, train_labels, test_images, test_labels, seed,
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
            missing = (
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
            missing = (
                f"the {name} data set was not found in {root}: expected {self._expected(str(root))}; "
                f"place the files there, allow the download, or apt-get install {self.package} and "
                "leave out --data-dir"
            )
            fix = f"replace it with the original file ({self.source}, or Debian's {self.package})"
        if files is None:  # one raise for both places: what to do differs, not what went wrong
            raise NasctlError(missing)
        train = self._pair(files, "train", fix)
        test = self._pair(files, "t10k", fix)
        return official_splits(self.info, root, *train, *test, seed, val_size)

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
# Fashion-MNIST's class names in label order (public: a test or a bench writing the set as an image
# folder names its class folders by them)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


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
                    classes=FASHION_MNIST_CLASSES),
        system_dir="/usr/share/datasets/fashion-mnist",
        package="dataset-fashion-mnist",
        torchvision_folder="FashionMNIST",
        dataset_class="FashionMNIST",
        source="https://github.com/zalandoresearch/fashion-mnist",
    ),
)

# Registry: data set name -> loader (``DATASETS[name](data_dir, seed, val_size, download)``).
