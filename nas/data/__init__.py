"""Data sets: built-in ones by name, a user's own images (``folder:DIR``, ``npz:FILE``), seeded splits.

Layers inside, low to high: ``splits`` (what a data set is, in-memory splits, the loader protocol),
``builtin`` (digits, the torchvision sets, the idx reader) and ``userdata`` (a user's folder or arrays),
``registry`` (names to loaders, ``load_dataset``). Use::

    from nasctl.nas.data import load_dataset
    splits = load_dataset("digits", seed=0)

Names resolve lazily (PEP 562), listed for type checkers and IDEs in the ``TYPE_CHECKING`` block: the
decoding workers of a user's folder import ``nasctl.nas.data.userdata`` and must not pull in torch (and
its threads) through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .builtin import FASHION_MNIST_CLASSES, IDX_FILES, read_idx
    from .registry import (
        DATASETS,
        dataset_info,
        dataset_names,
        dataset_spec,
        default_space,
        load_dataset,
        supernet_data,
    )
    from .splits import (
        DEFAULT_DATASET,
        DatasetInfo,
        DatasetLoader,
        DataSplits,
        TensorSplit,
        class_balanced_indices,
        first_test_images,
        official_splits,
        subset_train,
    )
    from .userdata import is_user_spec

_EXPORTS = {
    "builtin": ("IDX_FILES", "FASHION_MNIST_CLASSES", "read_idx"),
    "registry": ("DATASETS", "dataset_info", "dataset_names", "dataset_spec", "default_space", "load_dataset",
                 "supernet_data"),
    "splits": ("DEFAULT_DATASET", "DataSplits", "DatasetInfo", "DatasetLoader", "TensorSplit",
               "official_splits", "class_balanced_indices", "first_test_images", "subset_train"),
    "userdata": ("is_user_spec",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "DATASETS", "DEFAULT_DATASET", "FASHION_MNIST_CLASSES", "IDX_FILES", "DataSplits", "DatasetInfo",
    "DatasetLoader", "TensorSplit",
    "class_balanced_indices", "dataset_info", "dataset_names", "dataset_spec", "default_space",
    "first_test_images", "is_user_spec", "load_dataset", "official_splits", "read_idx", "subset_train",
    "supernet_data",
]
assert set(__all__) == {n for n in _WHERE if not n.startswith("_")}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
