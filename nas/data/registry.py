"""The data-set registry: names to loaders, and loading by name. Data sets are in-memory tensors, split
into train / val / test with a seed.

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

import logging
import os

from nasctl.core import did_you_mean
from nasctl.errors import NasctlError

from . import userdata
from .builtin import _LOADERS
from .splits import (
    DEFAULT_DATASET,
    DatasetInfo,
    DatasetLoader,
    DataSplits,
    subset_train,
)
from .userdata import Progress  # progress(images decoded, images in all): a folder's decoding

log = logging.getLogger(__name__)


DATASETS: dict[str, DatasetLoader] = {loader.info.name: loader for loader in _LOADERS}


def dataset_names() -> list[str]:
    """Registered names, the default (``digits``) first; e.g. for argparse ``choices``."""
    return list(DATASETS)


def _lookup(name: str, progress: Progress | None = None) -> DatasetLoader:
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
    spec = userdata.dataset_spec(name, image_size, channels, test_fraction, skip_bad_images)
    if not userdata.is_user_spec(spec):
        _lookup(spec)  # a built-in name must be one the registry knows
    return spec


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
