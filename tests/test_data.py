"""Tests for nasctl.nas.data: the digits split, batching and sharding, errors, and the torchvision
parsers fed tiny files that the tests write in the real on-disk formats."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from nasctl.errors import NasctlError
from nasctl.nas.data import (
    DATASETS,
    DatasetInfo,
    DataSplits,
    TensorSplit,
    dataset_info,
    dataset_names,
    default_space,
    load_dataset,
)

TORCHVISION_SETS = [n for n in DATASETS if n != "digits"]


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", seed=0)


# --- registry and info --------------------------------------------------------------------------


def test_names_default_first():
    assert dataset_names()[0] == "digits"
    assert set(dataset_names()) == {"digits", "cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"}


@pytest.mark.parametrize("name", list(DATASETS))
def test_info_consistent(name):
    info = dataset_info(name)
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.in_channels
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    assert 0 < info.default_eps < 1
    d = info.to_dict()
    assert DatasetInfo.from_dict(d) == info
    json.dumps(d)


def test_default_eps_per_threat_model():
    assert dataset_info("digits").default_eps == 0.1
    assert dataset_info("cifar10").default_eps == pytest.approx(8 / 255)
    assert dataset_info("svhn").default_eps == pytest.approx(8 / 255)
    assert dataset_info("mnist").default_eps == 0.3
    assert dataset_info("fashion-mnist").default_eps == 0.1


# --- digits ---------------------------------------------------------------------------------------


def test_digits_sizes_shapes_ranges(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1200, 200, 397)
    assert digits.info.name == "digits" and digits.info.resolution == 8
    for split in (digits.train, digits.val, digits.test):
        assert split.images.shape[1:] == (1, 8, 8)
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.min() >= 0 and split.images.max() <= 1
        assert set(split.labels.tolist()) <= set(range(10))
    assert digits.train.images.max() == 1.0  # 16/16 occurs: scaled by 16, not by 255


def test_digits_disjoint_complete_and_faithful(digits):
    from sklearn.datasets import load_digits

    parts = [set(s.source_indices.tolist()) for s in (digits.train, digits.val, digits.test)]
    assert sum(map(len, parts)) == 1797
    assert set.union(*parts) == set(range(1797))
    raw = load_digits()
    for split in (digits.train, digits.val, digits.test):
        idx = split.source_indices.numpy()
        np.testing.assert_array_equal(split.images[:, 0].numpy(), (raw.images[idx] / 16).astype(np.float32))
        np.testing.assert_array_equal(split.labels.numpy(), raw.target[idx])


def test_digits_mean_std_constants_match_data(digits):
    allpix = torch.cat([digits.train.images, digits.val.images, digits.test.images])
    assert allpix.mean().item() == pytest.approx(digits.info.mean[0], abs=1e-4)
    assert allpix.std(unbiased=False).item() == pytest.approx(digits.info.std[0], abs=1e-4)


def test_digits_seeded(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in zip((digits.train, digits.val, digits.test), (same.train, same.val, same.test)):
        assert torch.equal(a.source_indices, b.source_indices) and torch.equal(a.images, b.images)
    assert not torch.equal(digits.val.source_indices, other.val.source_indices)
    assert not torch.equal(digits.test.source_indices, other.test.source_indices)


def test_digits_val_size():
    s = load_dataset("digits", seed=0, val_size=50)
    assert (len(s.train), len(s.val), len(s.test)) == (1350, 50, 397)
    with pytest.raises(NasctlError, match="val-size"):
        load_dataset("digits", val_size=1400)


# --- TensorSplit ------------------------------------------------------------------------------------


def _numbered(n: int) -> TensorSplit:
    """Images whose single pixel is their own index, so a batch says which samples it holds."""
    assert n <= 256
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return TensorSplit(images, torch.arange(n, dtype=torch.int64))


def _epoch(batches) -> list[int]:
    """Sample ids of one epoch, in the order they were yielded."""
    return [i for x, y in batches for i in _ids(x, y)]


def _ids(x: torch.Tensor, y: torch.Tensor) -> list[int]:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    ids = torch.round(x.view(-1) * 255).long()
    assert torch.equal(ids, y)  # pixel and label travel together
    return ids.tolist()


def test_batches_in_order_and_float():
    split = _numbered(23)
    got = list(split.batches(10))
    assert [len(y) for _, y in got] == [10, 10, 3]
    assert _epoch(got) == list(range(23))
    assert [len(y) for _, y in split.batches(10, drop_last=True)] == [10, 10]


def test_batches_shuffle_covers_every_sample_once_and_is_seeded():
    split = _numbered(103)
    epoch1 = _epoch(split.batches(8, True, torch.Generator().manual_seed(3)))
    epoch2 = _epoch(split.batches(8, True, torch.Generator().manual_seed(3)))
    epoch3 = _epoch(split.batches(8, True, torch.Generator().manual_seed(4)))
    assert sorted(epoch1) == list(range(103)) and epoch1 != list(range(103))
    assert epoch1 == epoch2 and epoch1 != epoch3


@pytest.mark.parametrize("n, batch_size", [(103, 8), (101, 10), (100, 10), (7, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_disjoint_complete_equal_batches(n, batch_size, drop_last):
    split, world = _numbered(n), 2
    per_rank = []
    for rank in range(world):
        gen = torch.Generator().manual_seed(11)  # every rank seeds identically
        batches = list(split.batches(batch_size, True, gen, drop_last=drop_last, rank=rank, world_size=world))
        per_rank.append([_ids(x, y) for x, y in batches])
    assert len(per_rank[0]) == len(per_rank[1])  # collective ops stay in step
    seen = [{i for b in rank_batches for i in b} for rank_batches in per_rank]
    assert not seen[0] & seen[1]
    if drop_last:
        assert all(len(b) == batch_size for r in per_rank for b in r)
        assert len(seen[0] | seen[1]) == world * batch_size * len(per_rank[0])
    else:
        assert seen[0] | seen[1] == set(range(n))
        assert all(0 < len(b) <= batch_size + 1 for r in per_rank for b in r)
    # the shard is order[rank::world_size] of the single-process order
    order = torch.randperm(n, generator=torch.Generator().manual_seed(11)).tolist()
    flat0 = [i for b in per_rank[0] for i in b]
    assert flat0 == order[0::2][: len(flat0)]


def test_batches_argument_errors():
    split = _numbered(10)
    with pytest.raises(ValueError):
        next(split.batches(0))
    with pytest.raises(ValueError):
        next(split.batches(2, rank=2, world_size=2))
    with pytest.raises(ValueError, match="generator"):
        next(split.batches(2, shuffle=True, rank=0, world_size=2))


def test_subset_and_numpy(digits):
    first = digits.val.subset(30)
    assert len(first) == 30 and torch.equal(first.images, digits.val.images[:30])
    assert torch.equal(first.source_indices, digits.val.source_indices[:30])
    picked = digits.val.subset([5, 2, 7])
    assert torch.equal(picked.labels, digits.val.labels[[5, 2, 7]])
    assert torch.equal(digits.val.subset(torch.tensor([5, 2, 7])).images, picked.images)
    assert len(digits.val.subset(10_000)) == len(digits.val)
    arr = digits.val.numpy_images()
    arr[:] = 7.0  # a copy: the split is untouched
    assert digits.val.images.max() <= 1
    arr = _numbered(5).numpy_images()
    assert arr.dtype == np.float32 and arr.shape == (5, 1, 1, 1)
    np.testing.assert_allclose(arr.reshape(-1), np.arange(5) / 255, rtol=1e-6)


def test_tensorsplit_validates():
    with pytest.raises(ValueError):
        TensorSplit(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        TensorSplit(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        TensorSplit(torch.zeros(3, 1, 8, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))


# --- errors ---------------------------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unknown_name_suggests():
    with pytest.raises(NasctlError) as err:
        load_dataset("cifar-10")
    msg = _one_line(err)
    assert "did you mean 'cifar10'" in msg and "fashion-mnist" in msg
    assert load_dataset("DIGITS").info.name == "digits"


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_data_dir(name, tmp_path, monkeypatch):
    loader = DATASETS[name]
    if getattr(loader, "system_dir", None):  # fashion-mnist: as if Debian's package were not installed either
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(loader, system_dir=str(tmp_path / "none")))
    with pytest.raises(NasctlError, match="--data-dir DIR") as err:
        load_dataset(name)
    _one_line(err)


_EXPECTED_PLACE = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
    "mnist": os.path.join("MNIST", "raw"),
    "fashion-mnist": os.path.join("FashionMNIST", "raw"),
}


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_offline_download_is_one_line_error(name, tmp_path, monkeypatch):
    # This machine has no network anyway; the patch keeps the test fast and offline everywhere.
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(NasctlError) as err:
        load_dataset(name, data_dir=tmp_path, download=True)
    msg = _one_line(err)
    assert "could not download" in msg and "offline?" in msg
    assert str(tmp_path / _EXPECTED_PLACE[name]) in msg


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_not_found_without_download(name, tmp_path):
    with pytest.raises(NasctlError) as err:
        load_dataset(name, data_dir=tmp_path, download=False)
    msg = _one_line(err)
    assert "not found" in msg and str(tmp_path / _EXPECTED_PLACE[name]) in msg


# --- real on-disk formats, written tiny ---------------------------------------------------------------------


def _isfile_integrity(fpath, md5=None) -> bool:
    """Stand-in for torchvision's md5 check: the tiny files cannot match the real checksums."""
    return os.path.isfile(fpath)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _check_splits(splits: DataSplits, train_chw: np.ndarray, train_y, test_chw: np.ndarray, test_y) -> None:
    """Loaded tensors equal, pixel for pixel, what was written (val and train together cover train)."""
    n = len(train_y)
    assert len(splits.val) == max(1, n // 10) and len(splits.train) + len(splits.val) == n
    src = torch.cat([splits.train.source_indices, splits.val.source_indices])
    assert sorted(src.tolist()) == list(range(n))
    for split in (splits.train, splits.val):
        assert split.images.dtype == torch.uint8
        idx = split.source_indices.numpy()
        np.testing.assert_array_equal(split.images.numpy(), train_chw[idx])
        np.testing.assert_array_equal(split.labels.numpy(), np.asarray(train_y)[idx])
    np.testing.assert_array_equal(splits.test.images.numpy(), test_chw)
    np.testing.assert_array_equal(splits.test.labels.numpy(), np.asarray(test_y))
    x, _ = next(splits.test.batches(len(splits.test)))
    np.testing.assert_allclose(x.numpy(), test_chw.astype(np.float32) / 255, rtol=1e-6)


def _write_cifar(root: Path, folder: str, train_files, test_file, meta, label_key, classes, rng):
    base = root / folder
    base.mkdir(parents=True)
    written = {}
    for fname, n in [*train_files, (test_file, 5)]:
        chw = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        # CIFAR rows: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
        entry = {"batch_label": fname, "data": chw.reshape(n, 3072), label_key: labels}
        if label_key == "fine_labels":
            entry["coarse_labels"] = [y // 5 for y in labels]
        _pickle(base / fname, entry)
        written[fname] = (chw, labels)
    _pickle(base / meta[0], {meta[1]: [f"class{i}" for i in range(classes)]})
    train_chw = np.concatenate([written[f][0] for f, _ in train_files])
    train_y = [y for f, _ in train_files for y in written[f][1]]
    return train_chw, train_y, *written[test_file]


def test_cifar10_real_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", _isfile_integrity)
    rng = np.random.default_rng(0)
    train_files = [(f"data_batch_{i}", 4) for i in range(1, 6)]
    written = _write_cifar(
        tmp_path,
        "cifar-10-batches-py",
        train_files,
        "test_batch",
        ("batches.meta", "label_names"),
        "labels",
        10,
        rng,
    )
    splits = load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    assert splits.info.name == "cifar10" and splits.train.images.shape[1:] == (3, 32, 32)
    _check_splits(splits, *written)
    again = load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    assert torch.equal(again.val.source_indices, splits.val.source_indices)


def test_cifar100_real_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", _isfile_integrity)
    rng = np.random.default_rng(1)
    written = _write_cifar(
        tmp_path,
        "cifar-100-python",
        [("train", 30)],
        "test",
        ("meta", "fine_label_names"),
        "fine_labels",
        100,
        rng,
    )
    splits = load_dataset("cifar100", data_dir=tmp_path, seed=0, download=False, val_size=None)
    assert splits.info.num_classes == 100
    _check_splits(splits, *written)


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_real_format(name, folder, tmp_path):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    train_y = rng.integers(0, 10, size=20, dtype=np.uint8)
    test = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    test_y = rng.integers(0, 10, size=6, dtype=np.uint8)
    _write_idx(raw, "train", train, train_y)
    _write_idx(raw, "t10k", test, test_y)
    splits = load_dataset(name, data_dir=tmp_path, seed=0, download=False)
    assert splits.info.name == name and splits.test.images.shape == (6, 1, 28, 28)
    _check_splits(splits, train[:, None], train_y.astype(np.int64), test[:, None], test_y.astype(np.int64))


def test_svhn_real_format(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", _isfile_integrity)
    rng = np.random.default_rng(3)
    out = []
    for fname, n in [("train_32x32.mat", 20), ("test_32x32.mat", 5)]:
        x_hwcn = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # SVHN stores [H, W, C, N]
        y = rng.integers(1, 11, size=(n, 1), dtype=np.uint8)  # digit 0 is stored as label 10
        y[0, 0] = 10
        scipy.io.savemat(tmp_path / fname, {"X": x_hwcn, "y": y})
        out += [x_hwcn.transpose(3, 2, 0, 1), (y[:, 0] % 10).astype(np.int64)]
    splits = load_dataset("svhn", data_dir=tmp_path, seed=0, download=False)
    assert 0 in splits.test.labels.tolist() and 10 not in splits.train.labels.tolist()
    _check_splits(splits, *out)


def test_wrong_files_named_not_traceback(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)  # not 28x28
    _write_idx(raw, "train", small, np.zeros(4, dtype=np.uint8))
    _write_idx(raw, "t10k", small, np.zeros(4, dtype=np.uint8))
    with pytest.raises(NasctlError, match="do not hold mnist") as err:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    _one_line(err)


# --- a new data set: one loader and one registry line -------------------------------------------------


@dataclasses.dataclass
class _StripesLoader:
    """The loader a user would write in its own file: 8x8 grey images of horizontal, vertical or
    diagonal stripes with noise (3 classes), made from the seed, honouring ``val_size``."""

    info: DatasetInfo = DatasetInfo("stripes", 1, 8, 3, (0.5,), (0.3,), default_eps=0.1)
    default_space: str = "digits"

    def __call__(self, data_dir, seed: int, val_size: int | None, download: bool) -> DataSplits:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (420,), generator=g)
        i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        patterns = torch.stack([(i % 2), (j % 2), ((i + j) % 2)]).float()
        x = (0.7 * patterns[y] + 0.3 * torch.rand(420, 8, 8, generator=g)).unsqueeze(1)
        v = 60 if val_size is None else val_size
        cut = [0, 60, 60 + v, 420]  # test, val, train
        parts = [TensorSplit(x[a:b].contiguous(), y[a:b].contiguous()) for a, b in zip(cut, cut[1:])]
        return DataSplits(self.info, parts[2], parts[1], parts[0])


def test_a_registered_data_set_runs_the_main_job_end_to_end(monkeypatch, tmp_path, capsys):
    """docs/design.md §11: a data set is a loader and one registry line. Registered here (as the line in
    ``_LOADERS`` would), --dataset offers it, misspellings are answered with it, and ``nasctl search``
    trains, searches and scores on it with no other edit."""
    from nasctl.cli import main

    monkeypatch.setitem(DATASETS, "stripes", _StripesLoader())
    assert "stripes" in dataset_names()
    with pytest.raises(NasctlError, match="did you mean 'stripes'"):
        load_dataset("stripe", seed=0)
    assert main(["search", "--dataset", "stripes", "--run-root", str(tmp_path), "--epochs", "3",
                 "--pop-size", "4", "--generations", "2", "--val-size", "40", "--pgd-steps", "2",
                 "--finetune-members", "0"]) == 0
    run = next((tmp_path / "search").iterdir())
    doc = json.loads((run / "pareto.json").read_text())
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["dataset"] == "stripes" and doc["front"]
    assert all(m["final_images"] == 60 for m in doc["front"])  # scored on the loader's own test split
    assert max(m["final_clean_acc"] for m in doc["front"]) > 60  # stripes are learnable: far above 33 %


def test_first_test_images_cuts_only_the_test_split(digits):
    from nasctl.nas.data import first_test_images

    cut = first_test_images(digits, 50)
    assert cut.train is digits.train and cut.val is digits.val and cut.info == digits.info
    assert torch.equal(cut.test.images, digits.test.images[:50]) and len(digits.test) == 397
    assert first_test_images(digits, None) is digits and first_test_images(digits, 0) is digits
    assert len(first_test_images(digits, 10_000).test) == 397  # more than there are: the whole split


def test_the_32x32_sets_default_to_the_auto_space_a_32x32_folder_gets():
    """CIFAR-10/100 and SVHN search the space a user's 32x32 folder gets (issue 25), read from the data
    set's info alone (no files): the same stages, strides and choices as ``auto_space(32)``."""
    from nasctl.nas.space import auto_space
    from nasctl.nas.training.supernet import TrainConfig, resolve_space

    want = auto_space(32)
    for name in ("cifar10", "cifar100", "svhn"):
        assert default_space(name) == "auto"
        got = resolve_space(TrainConfig(dataset=name))
        assert got.name == want.name == "auto-32"
        assert got.largest().encode() == want.largest().encode()
        assert got.smallest().encode() == want.smallest().encode()
    assert resolve_space(TrainConfig(dataset="cifar10", space="tam")).name == "tam"  # still there by name
