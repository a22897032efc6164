"""Fashion-MNIST: the strict idx reader, the three places the files are found (Debian's package, a flat
--data-dir, torchvision's layout), one-line errors for bad files, the class-balanced --train-subset,
and the built-in 28x28 'mnist' space. The tests write small idx files themselves; one reads the real
Debian files when the package is installed."""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nasctl.errors import NasctlError
from nasctl.nas.data import (
    DATASETS,
    IDX_FILES,
    DataSplits,
    TensorSplit,
    class_balanced_indices,
    default_space,
    load_dataset,
    subset_train,
)
from nasctl.nas.space import load_space

from .test_train import nasctl, one_line_error

NAME = "fashion-mnist"
DEBIAN_DIR = Path(DATASETS[NAME].system_dir)


def _idx(values: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: magic 0x0000_08_<ndim>, big-endian dimensions, the bytes."""
    return struct.pack(f">I{values.ndim}I", 0x800 | values.ndim, *values.shape) + values.tobytes()


def write_set(folder: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0):
    """The four files of a tiny Fashion-MNIST in ``folder``; returns (train x, train y, test x, test y)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)[rng.permutation(n)]
        for kind, a in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(a)))
            else:
                (folder / name).write_bytes(_idx(a))
        arrays += [x, y]
    return arrays


@pytest.fixture
def debian(tmp_path, monkeypatch) -> Path:
    """Point the loader's Debian folder at an empty folder of the test's own."""
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setitem(DATASETS, NAME, dataclasses.replace(DATASETS[NAME], system_dir=str(folder)))
    return folder


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def _check(splits: DataSplits, train_x, train_y, test_x, test_y) -> None:
    n = len(train_y)
    assert len(splits.val) == max(1, n // 10) and len(splits.train) + len(splits.val) == n
    for split in (splits.train, splits.val):
        idx = split.source_indices.numpy()
        np.testing.assert_array_equal(split.images.numpy()[:, 0], train_x[idx])
        np.testing.assert_array_equal(split.labels.numpy(), train_y[idx].astype(np.int64))
    assert splits.test.images.shape == (len(test_y), 1, 28, 28) and splits.test.images.dtype == torch.uint8
    np.testing.assert_array_equal(splits.test.images.numpy()[:, 0], test_x)
    np.testing.assert_array_equal(splits.test.labels.numpy(), test_y.astype(np.int64))


# --- where the files are found ---------------------------------------------------------------------


def test_debian_folder_read_in_place_without_data_dir(debian):
    arrays = write_set(debian)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in debian.iterdir())
    splits = load_dataset(NAME, seed=0)
    _check(splits, *arrays)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in debian.iterdir()) == before  # nothing written
    again = load_dataset(NAME, seed=0)
    assert torch.equal(again.val.source_indices, splits.val.source_indices)
    other = load_dataset(NAME, seed=1)
    assert not torch.equal(other.val.source_indices, splits.val.source_indices)


@pytest.mark.parametrize("layout, gz", [("flat", True), ("flat", False), ("torchvision", True),
                                        ("torchvision", False)])
def test_data_dir_flat_or_torchvision_layout(debian, tmp_path, layout, gz):
    root = tmp_path / "data"
    arrays = write_set(root if layout == "flat" else root / "FashionMNIST" / "raw", gz=gz, seed=3)
    _check(load_dataset(NAME, data_dir=root, seed=0, download=False), *arrays)


def test_no_files_anywhere_names_the_debian_package(debian):
    with pytest.raises(NasctlError) as err:
        load_dataset(NAME)
    msg = _one_line(err)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir DIR" in msg and str(debian) in msg


def test_missing_data_dir_files_without_download(debian, tmp_path):
    root = tmp_path / "data"
    write_set(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()  # three of the four are not enough
    with pytest.raises(NasctlError) as err:
        load_dataset(NAME, data_dir=root, download=False)
    msg = _one_line(err)
    assert "not found" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(root / "FashionMNIST" / "raw") in msg


# --- bad files: one line naming the file and the fix -------------------------------------------------


def _truncate_gz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-200])


def _short_payload(path: Path) -> None:  # a valid gzip whose idx payload lacks its last image
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-784]))


def _padded(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw + b"\0" * 10))


def _header_only_part(path: Path) -> None:
    path.write_bytes(gzip.compress(b"\0\0\x08"))


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"<html>404 Not Found</html>" * 4)


def _swap_for_labels(path: Path) -> None:  # a labels file where the images belong: wrong magic number
    path.write_bytes((path.parent / "train-labels-idx1-ubyte.gz").read_bytes())


def _fewer_labels(path: Path) -> None:
    path.write_bytes(gzip.compress(_idx(np.zeros(39, dtype=np.uint8))))


def _small_images(path: Path) -> None:
    path.write_bytes(gzip.compress(_idx(np.zeros((40, 8, 8), dtype=np.uint8))))


def _label_ten(path: Path) -> None:
    path.write_bytes(gzip.compress(_idx(np.full(40, 10, dtype=np.uint8))))


BAD_FILES = {
    "truncated gzip": ("train-images-idx3-ubyte", _truncate_gz, "truncated or corrupted"),
    "short payload": ("train-images-idx3-ubyte", _short_payload, "the file is truncated"),
    "padded payload": ("t10k-images-idx3-ubyte", _padded, "longer than its header says"),
    "no header": ("t10k-labels-idx1-ubyte", _header_only_part, "shorter than its idx header"),
    "not gzip": ("train-labels-idx1-ubyte", _not_gzip, "truncated or corrupted"),
    "wrong magic": ("train-images-idx3-ubyte", _swap_for_labels,
                    "magic number 0x00000801, expected 0x00000803"),
    "lengths differ": ("train-labels-idx1-ubyte", _fewer_labels, "holds 39 labels but"),
    "8x8 images": ("train-images-idx3-ubyte", _small_images, "holds 8x8 images"),
    "label out of range": ("train-labels-idx1-ubyte", _label_ten, "holds label 10"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_debian_file_is_one_line_naming_file_and_fix(debian, case):
    name, damage, needle = BAD_FILES[case]
    write_set(debian)
    damage(debian / f"{name}.gz")
    with pytest.raises(NasctlError) as err:
        load_dataset(NAME)
    msg = _one_line(err)
    assert needle in msg and str(debian / f"{name}.gz") in msg
    assert msg.endswith("apt-get install --reinstall dataset-fashion-mnist"), msg


def test_bad_data_dir_file_says_replace_it(debian, tmp_path):
    root = tmp_path / "data"
    write_set(root, gz=False)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(NasctlError) as err:
        load_dataset(NAME, data_dir=root, download=False)
    msg = _one_line(err)
    assert str(path) in msg and "the file is truncated" in msg and "replace it with the original file" in msg


# --- --train-subset ----------------------------------------------------------------------------------


def _split(labels: np.ndarray) -> TensorSplit:
    n = len(labels)
    return TensorSplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.as_tensor(labels, dtype=torch.int64),
                       torch.arange(100, 100 + n))


def test_class_balanced_subset_is_balanced_seeded_and_nested():
    labels = np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 30, 40])
    rng = np.random.default_rng
    idx = class_balanced_indices(torch.as_tensor(labels), 205, rng(0))
    assert len(set(idx.tolist())) == 205
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 205
    np.testing.assert_array_equal(idx, class_balanced_indices(torch.as_tensor(labels), 205, rng(0)))
    assert not np.array_equal(idx, class_balanced_indices(torch.as_tensor(labels), 205, rng(1)))
    np.testing.assert_array_equal(idx[:50], class_balanced_indices(torch.as_tensor(labels), 50, rng(0)))
    # a class that runs out (class 8 has 30) leaves its share to the others
    big = class_balanced_indices(torch.as_tensor(labels), 500, rng(0))
    counts = np.bincount(labels[big], minlength=10)
    assert counts[8] == 30 and counts.sum() == 500 and counts[[0, 1, 2, 3, 4, 5, 6, 7, 9]].min() >= 40


def test_subset_train_keeps_val_and_test_and_provenance():
    labels = np.arange(300) % 10
    info = DATASETS[NAME].info
    splits = DataSplits(info, _split(labels), _split(labels[:20]), _split(labels[:30]))
    sub = subset_train(splits, 120, seed=0)
    assert len(sub.train) == 120 and sub.val is splits.val and sub.test is splits.test
    assert np.bincount(sub.train.labels.numpy(), minlength=10).tolist() == [12] * 10
    assert set(sub.train.source_indices.tolist()) <= set(range(100, 400))
    assert torch.equal(subset_train(splits, 120, seed=0).train.source_indices, sub.train.source_indices)
    assert subset_train(splits, None, seed=0) is splits
    assert len(subset_train(splits, 300, seed=0).train) == 300


@pytest.mark.parametrize("n, needle", [(0, "positive"), (-5, "positive"), (301, "at most 300")])
def test_subset_train_bad_sizes_are_one_line(n, needle):
    labels = np.arange(300) % 10
    splits = DataSplits(DATASETS[NAME].info, _split(labels), _split(labels[:20]), _split(labels[:30]))
    with pytest.raises(NasctlError) as err:
        subset_train(splits, n, seed=0)
    assert needle in _one_line(err) and "--train-subset" in str(err.value)


def test_train_subset_is_used_and_recorded(tmp_path):
    from nasctl.nas.training.supernet import TrainConfig, train_supernet

    cfg = TrainConfig(train_subset=640, epochs=0, run_root=str(tmp_path), name="subset")
    path, _ = train_supernet(cfg)
    doc = json.loads((path.parent / "config.json").read_text())
    assert doc["config"]["train_subset"] == 640
    from nasctl.nas.training.supernet import Trainer

    trainer = Trainer(cfg, tmp_path / "probe")
    assert len(trainer.data.train) == 640
    assert np.bincount(trainer.data.train.labels.numpy(), minlength=10).tolist() == [64] * 10


def test_cli_bad_files_and_subsets_exit_2_with_one_line(tmp_path):
    root = tmp_path / "data"
    write_set(root)
    ok = tmp_path / "ok"
    write_set(ok)
    path = root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(41, dtype=np.uint8))))
    one_line_error(nasctl("train", "--dataset", NAME, "--data-dir", str(root), "--epochs", "0", cwd=tmp_path),
                   "holds 41 labels but", str(path))
    one_line_error(nasctl("train", "--dataset", NAME, "--data-dir", str(ok), "--train-subset", "0",
                          cwd=tmp_path), "--train-subset must be a positive")
    # 40 train images, 4 carved out for val: 36 left. Known only once the set is loaded, so the progress
    # line "loaded fashion-mnist from ..." comes first; the error is still one line and exit 2
    proc = nasctl("train", "--dataset", NAME, "--data-dir", str(ok), "--train-subset", "64", "--epochs", "0",
                  cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [ln for ln in lines if ln.startswith("nasctl: error:")] == lines[-1:], proc.stderr
    assert "--train-subset 64 is larger" in lines[-1] and "at most 36" in lines[-1]


# --- the 28x28 space ---------------------------------------------------------------------------------


def test_mnist_space_is_the_default_for_28x28_sets_and_spans_2k_to_200k():
    assert default_space(NAME) == default_space("mnist") == "mnist"
    space = load_space("mnist")
    small = space.cost(space.smallest(), 1, 28, 10)[0]
    large = space.cost(space.largest(), 1, 28, 10)[0]
    assert 1_500 <= small <= 2_500 and 150_000 <= large <= 250_000, (small, large)
    from nasctl.nas.supernet import Supernet

    info = DATASETS[NAME].info
    net = Supernet(space, 1, 10, info.mean, info.std)
    for genome in (space.smallest(), space.largest(), space.sample(np.random.default_rng(0))):
        sub = net.extract(genome).eval()
        assert sum(p.numel() for p in sub.parameters()) == space.cost(genome, 1, 28, 10)[0]
        assert sub(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# --- the real files, where Debian's package is installed ---------------------------------------------


@pytest.mark.skipif(not all((DEBIAN_DIR / f"{f}.gz").is_file() for f in IDX_FILES),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_DIR} lacks the idx "
                    "files; apt-get install dataset-fashion-mnist)")
def test_real_debian_files():
    splits = load_dataset(NAME, seed=0)
    assert len(splits.train) + len(splits.val) == 60_000 and len(splits.val) == 5_000
    assert len(splits.test) == 10_000 and splits.test.images.shape[1:] == (1, 28, 28)
    train_labels = torch.cat([splits.train.labels, splits.val.labels])
    assert torch.bincount(train_labels, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == [1_000] * 10
    x, _ = next(splits.train.batches(5_000))
    assert float(x.mean()) == pytest.approx(splits.info.mean[0], abs=0.01)
    assert float(x.std()) == pytest.approx(splits.info.std[0], abs=0.01)
    sub = subset_train(splits, 10_000, seed=0)
    assert torch.bincount(sub.train.labels, minlength=10).tolist() == [1_000] * 10


# --- the recipes and the baselines benchmark --------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["fashion-mnist-cpu", "fashion-mnist-gpu"])
def test_recipes_are_valid_search_configs(name):
    from nasctl.config import merge_config
    from nasctl.nas.search import SearchConfig

    path = CONFIGS / f"{name}.yaml"
    assert path.read_text().startswith("#"), "each recipe explains its numbers at the top"
    cfg = merge_config(SearchConfig, str(path))  # validates, the 'train' settings included
    tcfg = cfg.train_config()
    assert cfg.dataset == NAME and tcfg.dataset == NAME and tcfg.attack == "pgd"
    assert cfg.final_steps >= 20 and cfg.final_restarts >= 2 and cfg.finetune_members >= 1
    if name.endswith("cpu"):
        assert tcfg.train_subset and tcfg.train_subset <= 55_000
    else:
        assert tcfg.train_subset is None


def test_fashion_baselines_are_strided_nets_of_the_spaces(load_bench):
    bench = load_bench("bench_baselines")
    info = DATASETS[NAME].info
    data = DataSplits(info, *(_split(np.arange(10)) for _ in range(3)))
    depths, widths, sizes = set(), set(), []
    for label, (space, genome) in bench.FASHION_BASELINES.items():
        model = bench.build(genome, data, 0, space)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs[0].stride == (2, 2), label  # strided early: the stem halves 28x28
        assert sum(c.stride == (2, 2) for c in convs) == 3, label
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        sizes.append(sum(p.numel() for p in model.parameters()))
        if space == "mnist":
            depths.add(len(convs))
            widths.add(tuple(sorted({c.out_channels for c in convs})))  # the width profile
        else:
            assert any(c.groups > 1 for c in convs), "the MobileNetV2-style net has depthwise convs"
    assert len(depths) >= 3 and len(widths) >= 3 and 2_000 < min(sizes) and max(sizes) < 210_000


def test_fashion_bench_runs_on_tiny_data_with_the_recipe(load_bench, debian, tmp_path):
    write_set(debian, n_train=100, n_test=12)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset: fashion-mnist\nfinetune_epochs: 1\nfinal_steps: 2\nfinal_restarts: 2\n"
                      "train: {train_subset: 64}\n")
    bench = load_bench("bench_baselines")
    labels = [k for k in bench.FASHION_BASELINES][::5]  # the first plain stack and the MobileNetV2 net
    out = tmp_path / "b.json"
    doc = bench.main(["--dataset", NAME, "--config", str(recipe), "--only", *labels, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["train_images"] == 64 and doc["test_images"] == 12 and doc["train_subset"] == 64
    assert doc["recipe"]["epochs"] == 1 and doc["recipe"]["lr"] == 0.05 and doc["recipe"]["eps"] == 0.1
    assert [r["label"] for r in doc["baselines"]] == labels
    for r in doc["baselines"]:
        assert r["attack"]["steps"] == 2 and r["attack"]["restarts"] == 2 and r["test_images"] == 12
