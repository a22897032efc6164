"""Tests for nasctl.nas.data.userdata: a user's own images as ``folder:DIR`` and ``npz:FILE`` data sets.

The folders are real image files written by the tests (scikit-learn's digits as PNG/JPEG, Fashion-MNIST
from Debian's files as PNG, small synthetic RGB/gray/16-bit images); every bad input is checked for
its one-line message and for leaving the user's folder untouched. The decode cache lives in tmp_path
(``NASCTL_CACHE_DIR``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nasctl.errors import NasctlError
from nasctl.nas.data import (
    DatasetInfo,
    dataset_info,
    dataset_spec,
    default_space,
    load_dataset,
    official_splits,
    supernet_data,
    userdata,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCTL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits_u8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as exact uint8 images (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images / 16 * 255).astype(np.uint8), d.target.astype(np.int64)


def write_images(root: Path, images: np.ndarray, labels: np.ndarray, part: str = "", ext: str = "png",
                 names: list[str] | None = None, first: int = 0, **save) -> Path:
    """Write ``images`` (uint8 [N, H, W] or [N, H, W, 3]) as ``root/part/<class>/<index>.ext``, the file
    name the zero-padded row (from ``first``), so sorted names keep the array order within a class."""
    for i, (a, y) in enumerate(zip(images, labels)):
        folder = root / part / (names[y] if names else str(int(y)))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{first + i:05d}.{ext}", **save)
    return root


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return sorted(out)


def folder_order(labels: np.ndarray) -> np.ndarray:
    """Rows in ImageFolder order: by class, then by file name (= row)."""
    return np.argsort(labels, kind="stable")


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels.astype(np.int64))


def assert_same_splits(a, b) -> None:
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.labels, sb.labels)
        assert torch.equal(sa.source_indices, sb.source_indices)


def raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(NasctlError, match=match) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- folders of real images ---------------------------------------------------------------------------


def test_digits_png_train_test_folders(tmp_path, digits_u8):
    x, y = digits_u8[0][:300], digits_u8[1][:300]
    root = tmp_path / "digits"
    write_images(root, x[:240], y[:240], "train")
    write_images(root, x[240:], y[240:], "test", first=240)
    before = snapshot(root)
    spec = f"folder:{root}"
    got = load_dataset(spec, seed=3, val_size=20)

    tr, te = folder_order(y[:240]), folder_order(y[240:])
    want = official_splits(got.info, root, *as_tensors(x[:240][tr], y[:240][tr]),
                           *as_tensors(x[240:][te], y[240:][te]), 3, 20)
    assert_same_splits(got, want)
    info = got.info
    assert (info.name, info.in_channels, info.resolution, info.num_classes) == (spec, 1, 8, 10)
    assert info.classes == tuple(str(d) for d in range(10)) and info.default_eps == pytest.approx(8 / 255)
    pix = got.train.images.double() / 255
    assert info.mean[0] == pytest.approx(pix.mean().item(), abs=1e-4)
    assert info.std[0] == pytest.approx(pix.std(unbiased=False).item(), abs=1e-4)
    assert default_space(spec) == "auto"
    assert dataset_info(spec) == load_dataset(spec, seed=0).info
    assert snapshot(root) == before  # nothing written into the user's folder


def test_digits_jpeg_class_folders_stratified_test(tmp_path, digits_u8):
    x, y = digits_u8[0][:200], digits_u8[1][:200]
    root = write_images(tmp_path / "d", x, y, ext="jpg", quality=95)
    spec = f"folder:{root}"
    a, b = load_dataset(spec, seed=0), load_dataset(spec, seed=1)
    counts = np.bincount(y, minlength=10)
    assert np.bincount(a.test.labels.numpy(), minlength=10).tolist() == [int(c * 0.2 + 0.5) for c in counts]
    assert len(a.train) + len(a.val) + len(a.test) == 200
    # the test split is the folder's, not the run's: the same for every seed; val is the seed's
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.source_indices, b.val.source_indices)
    decoded = userdata.decoded_images(userdata.parse_spec(spec), None)[1].images[:, 0].astype(float)
    assert np.abs(decoded - x[folder_order(y)]).mean() < 4  # JPEG is lossy; 0..255 scale
    half = load_dataset(f"{spec}?test_fraction=0.5", seed=0)
    assert len(half.test) == sum(int(c * 0.5 + 0.5) for c in counts)


def test_fashion_mnist_folder_equals_builtin_loader(tmp_path):
    """The same images as PNG folders and as idx files give exactly the built-in loader's splits."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST is not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    from nasctl.nas.data import FASHION_MNIST_CLASSES

    full = load_dataset("fashion-mnist", seed=0)
    official = {}
    for name, parts in (("train", (full.train, full.val)), ("test", (full.test,))):
        n = sum(len(p) for p in parts)
        images, labels = np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.int64)
        for p in parts:  # back to the file order
            images[p.source_indices.numpy()] = p.images[:, 0].numpy()
            labels[p.source_indices.numpy()] = p.labels.numpy()
        official[name] = images, labels
    folders = [f"{c}-{n.replace('/', '_')}" for c, n in enumerate(FASHION_MNIST_CLASSES)]
    root, idx_dir = tmp_path / "fmnist", tmp_path / "idx"
    idx_dir.mkdir()
    for name, per_class, prefix in (("train", 30, "train"), ("test", 10, "t10k")):
        images, labels = official[name]
        rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        rows = rows[np.lexsort((rows, labels[rows]))]  # class-sorted: ImageFolder's order is the file order
        write_images(root, images[rows], labels[rows], name, names=folders)
        header = np.array([len(rows), 28, 28], ">u4").tobytes()
        (idx_dir / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\0\0\x08\x03" + header + images[rows].tobytes())
        (idx_dir / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\0\0\x08\x01" + header[:4] + labels[rows].astype(np.uint8).tobytes())
    builtin = load_dataset("fashion-mnist", data_dir=idx_dir, seed=5, val_size=40)
    mine = load_dataset(f"folder:{root}", seed=5, val_size=40)
    assert (len(mine.train), len(mine.val), len(mine.test)) == (260, 40, 100)
    assert_same_splits(mine, builtin)
    assert mine.info.classes == tuple(folders) and mine.info.in_channels == 1 and mine.info.resolution == 28


def test_grayscale_rgb_detection_and_channels_override(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 6, 6), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 6, 6, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    only_gray = write_images(tmp_path / "gray", gray, labels)
    deep = (gray[0].astype(np.uint16) * 257)  # a 16-bit PNG: scaled to 8 bits, not clipped
    Image.fromarray(deep).save(only_gray / "0" / "99999.png")
    g = userdata.decoded_images(userdata.parse_spec(f"folder:{only_gray}"), None)[1].images
    assert g.shape == (7, 1, 6, 6) and np.array_equal(g[3, 0], gray[0])  # class 0: 00000, 00002, 00004, 99999
    mixed = tmp_path / "mixed"
    write_images(mixed, gray[:3], labels[:3], first=0)
    write_images(mixed, rgb[3:5], labels[3:5], ext="bmp", first=3)
    write_images(mixed, rgb[5:], labels[5:], ext="webp", first=5, lossless=True)
    order = folder_order(labels)  # class 0: rows 0, 2, 4; class 1: rows 1, 3, 5
    sources = [np.repeat(gray[i][..., None], 3, axis=2) if i < 3 else rgb[i] for i in order]
    m = userdata.decoded_images(userdata.parse_spec(f"folder:{mixed}"), None)[1].images
    assert m.shape == (6, 3, 6, 6)
    for got, want in zip(m, sources):  # gray images in a colour set: replicated; BMP and lossless WebP exact
        assert np.array_equal(got.transpose(1, 2, 0), want)
    one = userdata.decoded_images(userdata.parse_spec(f"folder:{mixed}?channels=1"), None)[1].images
    assert one.shape == (6, 1, 6, 6)
    # listed 4th: row 3, class 1's second image
    assert np.array_equal(one[4, 0], np.asarray(Image.fromarray(rgb[3]).convert("L")))
    three = load_dataset(f"folder:{only_gray}?channels=3", val_size=1)
    assert three.info.in_channels == 3 and len(three.info.mean) == 3
    assert torch.equal(three.test.images[:, 0], three.test.images[:, 2])


def test_image_size_resizes_and_mixed_sizes_refused(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "sizes"
    shapes = [(10, 10), (12, 8), (10, 10), (7, 7)]
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    for i, a in enumerate(arrays):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / str(i % 2) / f"{i}.png")
    msg = raises("different sizes", load_dataset, f"folder:{root}")
    assert "10x10 (2 images" in msg and "8x12" in msg and "--image-size N" in msg
    got = userdata.decoded_images(userdata.parse_spec(f"folder:{root}?image_size=6"), None)[1].images
    bilinear = Image.Resampling.BILINEAR
    want = [np.asarray(Image.fromarray(arrays[i]).resize((6, 6), bilinear)) for i in (0, 2, 1, 3)]
    assert got.shape == (4, 1, 6, 6) and all(np.array_equal(g[0], w) for g, w in zip(got, want))
    wide = tmp_path / "wide"
    write_images(wide, rng.integers(0, 256, (4, 6, 9), dtype=np.uint8), np.array([0, 1, 0, 1]))
    assert "9x6" in raises("not square", load_dataset, f"folder:{wide}")
    assert load_dataset(f"folder:{wide}?image_size=5&test_fraction=0.5", val_size=0).info.resolution == 5


def test_cache_skips_decoding_and_a_changed_folder_decodes_again(tmp_path, digits_u8, monkeypatch):
    x, y = digits_u8[0][:60], digits_u8[1][:60]
    root = write_images(tmp_path / "c", x, y)
    spec = f"folder:{root}"
    first = load_dataset(spec, seed=2, val_size=5)
    cached = sorted(p.name for p in (tmp_path / "cache" / "images").iterdir())
    assert len(cached) == 1 and cached[0].endswith(".npz")
    real = userdata._decode_chunk

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(userdata, "_decode_chunk", no_decoding)
    assert_same_splits(load_dataset(spec, seed=2, val_size=5), first)
    assert dataset_info(spec).name == spec
    assert dataset_info(spec) == dataset_info(spec)
    (root / "0" / "notes.txt").write_text("not an image")  # ignored: no new decode
    load_dataset(spec, seed=2, val_size=5)
    touched = root / "3" / sorted(os.listdir(root / "3"))[0]
    os.utime(touched, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(spec)
    monkeypatch.setattr(userdata, "_decode_chunk", real)
    load_dataset(spec)
    entries = list((tmp_path / "cache" / "images").glob("*.npz"))
    assert len(entries) == 1  # the stale entry went
    (root / "3" / touched.name).unlink()
    monkeypatch.setattr(userdata, "_decode_chunk", no_decoding)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(spec)
    monkeypatch.setattr(userdata, "_decode_chunk", real)
    assert len(load_dataset(spec, val_size=5).train) + 5 + len(load_dataset(spec).test) == 59


def test_parallel_decoding_equals_serial_and_reports_progress(tmp_path, digits_u8, monkeypatch, caplog):
    x, y = digits_u8[0][:200], digits_u8[1][:200]
    root = write_images(tmp_path / "p", x, y)
    serial = load_dataset(f"folder:{root}", seed=0)
    monkeypatch.setenv("NASCTL_CACHE_DIR", str(tmp_path / "cache2"))
    monkeypatch.setattr(userdata, "PARALLEL_MIN_IMAGES", 0)
    monkeypatch.setattr(userdata, "MAX_CHUNK", 32)
    monkeypatch.setattr(userdata, "_workers", lambda: 2)
    seen = []
    with caplog.at_level(logging.INFO, logger="nasctl.nas.data.userdata"):
        parallel = load_dataset(f"folder:{root}", seed=0, progress=lambda done, n: seen.append((done, n)))
    assert_same_splits(parallel, serial)
    assert f"decoding 200 images of {root} with 2 processes" in caplog.text
    assert "decoded 200 images" in caplog.text
    assert seen[-1] == (200, 200) and len(seen) > 1 and all(t == 200 for _, t in seen)


# --- folders: bad input -----------------------------------------------------------------------------------


def _two_classes(root: Path, n: int = 3, part: str = "", ext: str = "png") -> Path:
    rng = np.random.default_rng(2)
    return write_images(root, rng.integers(0, 256, (2 * n, 5, 5), dtype=np.uint8), np.arange(2 * n) % 2,
                        part, ext=ext)


def test_bad_folders_name_the_problem(tmp_path):
    assert "does not exist" in raises("does not exist", load_dataset, f"folder:{tmp_path / 'nope'}")
    (tmp_path / "file.npz").write_bytes(b"x")
    assert "npz:" in raises("is not a folder", load_dataset, f"folder:{tmp_path / 'file.npz'}")
    (tmp_path / "empty").mkdir()
    raises("is empty", load_dataset, f"folder:{tmp_path / 'empty'}")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(loose / "a.png")
    raises("no class folders", load_dataset, f"folder:{loose}")
    one = write_images(tmp_path / "one", np.zeros((3, 4, 4), np.uint8), np.zeros(3, np.int64))
    raises("one class folder \\('0'\\)", load_dataset, f"folder:{one}")
    hollow = _two_classes(tmp_path / "hollow")
    (hollow / "2").mkdir()
    (hollow / "2" / "readme.md").write_text("x")
    assert str(hollow / "2") in raises("holds no images \\(1 other", load_dataset, f"folder:{hollow}")

    split = _two_classes(tmp_path / "split", part="train")
    raises("has no .*test/", load_dataset, f"folder:{split}")
    _two_classes(split, part="test")
    (split / "test" / "1").rename(split / "test" / "one")
    msg = raises("differ", load_dataset, f"folder:{split}")
    assert "lacks ['1']" in msg and "['one']" in msg
    (split / "test" / "one").rename(split / "test" / "1")
    _two_classes(split, part="val")
    (split / "val" / "2").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(split / "val" / "2" / "x.png")
    assert "['2']" in raises("val.* differ", load_dataset, f"folder:{split}")
    test_only = _two_classes(tmp_path / "testonly", part="test")
    raises("no train/", load_dataset, f"folder:{test_only}")
    raises("test_fraction .* class folders only", load_dataset, f"folder:{split}?test_fraction=0.3")


def test_val_folder_is_the_val_split(tmp_path):
    root = _two_classes(tmp_path / "v", n=6, part="train")
    _two_classes(root, n=2, part="test")
    _two_classes(root, n=4, part="val")
    spec = f"folder:{root}"
    whole = load_dataset(spec, seed=0)
    assert (len(whole.train), len(whole.val), len(whole.test)) == (12, 8, 4)
    some = load_dataset(spec, seed=0, val_size=3)
    assert (len(some.train), len(some.val)) == (12, 3)
    assert set(some.val.source_indices.tolist()) <= set(range(8))
    raises("between 0 and 8", load_dataset, spec, val_size=9)


def test_non_images_ignored_and_counted(tmp_path, caplog):
    root = _two_classes(tmp_path / "n")
    (root / "0" / "labels.csv").write_text("a,b")
    (root / "1" / "Thumbs.db").write_bytes(b"\0")
    (root / "1" / ".hidden.png").write_bytes(b"garbage")  # hidden (e.g. macOS ._x.png): not even counted
    (root / "README.txt").write_text("my data")
    with caplog.at_level(logging.INFO, logger="nasctl.nas.data.userdata"):
        got = load_dataset(f"folder:{root}", val_size=1)
    assert len(got.train) + len(got.val) + len(got.test) == 6
    assert "ignoring 3 files" in caplog.text


def test_corrupt_and_truncated_images_named_or_skipped(tmp_path, caplog):
    root = _two_classes(tmp_path / "bad", n=4)
    before = snapshot(root)
    (root / "0" / "broken.png").write_bytes(b"\x89PNG not really")
    msg = raises("cannot decode", load_dataset, f"folder:{root}")
    assert str(root / "0" / "broken.png") in msg and "--skip-bad-images" in msg
    (root / "0" / "broken.png").unlink()
    good = (root / "1" / "00001.png").read_bytes()
    (root / "1" / "00001.png").write_bytes(good[: len(good) // 2])
    assert "truncated" in raises(f"cannot decode {root / '1' / '00001.png'}", load_dataset, f"folder:{root}")
    with caplog.at_level(logging.WARNING, logger="nasctl.nas.data.userdata"):
        got = load_dataset(f"folder:{root}?skip_bad_images=1", val_size=1)
    assert len(got.train) + len(got.val) + len(got.test) == 7
    assert "skipped 1 of 8 images" in caplog.text
    assert [p for p, _, _ in snapshot(root)] == [p for p, _, _ in before]  # nothing added


def test_too_large_for_memory_refused_before_decoding(tmp_path, monkeypatch):
    root = _two_classes(tmp_path / "big", n=4)
    monkeypatch.setattr(userdata, "mem_available_bytes", lambda: 50)
    monkeypatch.setattr(userdata, "_decode_chunk", lambda *a: pytest.fail("decoded before the check"))
    msg = raises("only 50.0 kB|only 0.1 kB|are available", load_dataset, f"folder:{root}")
    assert "8 images of 5x5x1" in msg and "use fewer images" in msg
    monkeypatch.setattr(userdata, "mem_available_bytes", lambda: 8 * 3 * 3 * userdata.MEMORY_FACTOR * 100)
    assert "--image-size" in raises("available", load_dataset, f"folder:{root}?image_size=40")


# --- npz files ------------------------------------------------------------------------------------------


def _save(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_layouts_and_dtypes(tmp_path):
    rng = np.random.default_rng(3)
    nhwc = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    spec = _save(tmp_path / "a.npz", x_train=nhwc[:20], y_train=y[:20], x_test=nhwc[20:], y_test=y[20:],
                 classes=np.array(["cat", "dog", "eel"]))
    got = load_dataset(spec, seed=0, val_size=4)
    want = official_splits(got.info, tmp_path, *as_tensors(nhwc[:20], y[:20]),
                           *as_tensors(nhwc[20:], y[20:]), 0, 4)
    assert_same_splits(got, want)
    assert got.info.classes == ("cat", "dog", "eel") and got.info.in_channels == 3
    assert default_space(spec) == "auto"
    floats = nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255  # NCHW floats in [0, 1]
    f = load_dataset(_save(tmp_path / "f.npz", x_train=floats[:20], y_train=y[:20], x_test=floats[20:],
                           y_test=y[20:]), val_size=4)
    assert f.test.images.dtype == torch.float32 and torch.equal(f.test.images, torch.from_numpy(floats[20:]))
    assert f.info.classes == ("0", "1", "2")
    gray = load_dataset(_save(tmp_path / "g.npz", x_train=nhwc[:20, ..., 0], y_train=y[:20],
                              x_test=nhwc[20:, ..., 0], y_test=y[20:], x_val=nhwc[:5, ..., 0], y_val=y[:5]))
    assert gray.info.in_channels == 1 and (len(gray.train), len(gray.val), len(gray.test)) == (20, 5, 10)
    assert dataset_info(spec) == load_dataset(spec).info


def test_npz_bad_input(tmp_path):
    y = np.arange(12) % 2
    x = np.zeros((12, 6, 6), np.uint8)

    def bad(match, **arrays):
        return raises(match, load_dataset, _save(tmp_path / "bad.npz", **arrays))

    amb = np.zeros((12, 3, 3, 3), np.uint8)
    assert "NHWC" in bad("cannot tell whether x_train", x_train=amb, y_train=y, x_test=amb, y_test=y)
    flat = np.zeros((12, 1, 6, 1), np.uint8)
    bad("cannot tell whether x_train", x_train=flat, y_train=y, x_test=flat, y_test=y)
    bad("neither axis 3", x_train=np.zeros((12, 6, 6, 5)), y_train=y, x_test=x, y_test=y)
    bad("floats from 0 to 255", x_train=np.linspace(0, 255, 12 * 36).reshape(12, 6, 6), y_train=y, x_test=x,
        y_test=y)
    bad("integers -1..-1", x_train=np.full((12, 6, 6), -1), y_train=y, x_test=x, y_test=y)
    bad("lacks x_test; did you mean 'X_test'", x_train=x, y_train=y, X_test=x, y_test=y)
    bad("y_train holds 11 labels but x_train holds 12", x_train=x, y_train=y[:11], x_test=x, y_test=y)
    bad("labels go up to 3 \\(4 classes\\) but classes names 2", x_train=x, y_train=y, x_test=x, y_test=y + 2,
        classes=np.array(["a", "b"]))
    bad("y_test holds label -1", x_train=x, y_train=y, x_test=x, y_test=y - 1)
    bad("one class only", x_train=x, y_train=0 * y, x_test=x, y_test=0 * y)
    bad("not square", x_train=np.zeros((12, 6, 7), np.uint8), y_train=y, x_test=x, y_test=y)
    bad("must be integers", x_train=x, y_train=y.astype(float), x_test=x, y_test=y)
    bad("x_val without y_val", x_train=x, y_train=y, x_test=x, y_test=y, x_val=x)
    (tmp_path / "text.npz").write_text("hello")
    raises("is not a numpy .npz file", load_dataset, f"npz:{tmp_path / 'text.npz'}")
    raises("does not exist", load_dataset, f"npz:{tmp_path / 'missing.npz'}")
    raises("is a folder; .* use folder:", load_dataset, f"npz:{tmp_path}")


# --- the spec string --------------------------------------------------------------------------------------


def test_dataset_spec_canonical_form_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = dataset_spec("folder:imgs", image_size=32, channels=3, test_fraction=0.25, skip_bad_images=True)
    assert full == f"folder:{tmp_path}/imgs?image_size=32&channels=3&test_fraction=0.25&skip_bad_images=1"
    assert dataset_spec(full) == full and userdata.parse_spec(full).encode() == full
    shuffled = f"FOLDER:{tmp_path}/imgs/?skip-bad-images=yes&test_fraction=0.25&channels=3&image_size=32"
    assert dataset_spec(shuffled) == full
    assert dataset_spec("folder:imgs", test_fraction=0.2) == f"folder:{tmp_path}/imgs"  # the default
    assert dataset_spec("npz:~/x.npz") == f"npz:{Path.home()}/x.npz"
    odd = dataset_spec("folder:/data/what?/x?")  # a '?' in the path: a last '?' keeps the options apart
    assert odd == "folder:/data/what?/x?" and userdata.parse_spec(odd).path == "/data/what?/x"
    assert dataset_spec("digits") == "digits" and dataset_spec("fashion-mnist") == "fashion-mnist"


def test_dataset_spec_errors_name_the_option():
    raises("unknown option 'imagesize' .*did you mean 'image_size'", dataset_spec, "folder:/x?imagesize=3")
    raises("--image-size applies to your own images", dataset_spec, "digits", image_size=16)
    raises("--skip-bad-images applies", dataset_spec, "cifar10", skip_bad_images=True)
    raises("did you mean 'digits'", dataset_spec, "digts")
    raises("image_size .*from 2 to 4096, got 0", dataset_spec, "folder:/x", image_size=0)
    raises("channels .*1 \\(grayscale\\) or 3", dataset_spec, "folder:/x?channels=2")
    raises("test_fraction .*between 0 and 1", dataset_spec, "folder:/x", test_fraction=1.5)
    raises("image_size=.*must be a number", dataset_spec, "folder:/x?image_size=big")
    raises("given twice with different values", dataset_spec, "folder:/x?image_size=8", image_size=16)
    assert dataset_spec("folder:/x?image_size=8", image_size=8) == "folder:/x?image_size=8"
    raises("'channels' is given twice", dataset_spec, "folder:/x?channels=1&channels=3")
    raises("--image-size \\(image_size\\) does not apply to npz:", dataset_spec, "npz:/x.npz", image_size=8)
    raises("folder: needs a path", dataset_spec, "folder:")


def test_load_by_any_spelling_stores_the_canonical_name(tmp_path, monkeypatch, digits_u8):
    root = write_images(tmp_path / "rel", digits_u8[0][:40], digits_u8[1][:40])
    monkeypatch.chdir(tmp_path)
    got = supernet_data({"dataset": "folder:rel/?image_size=8", "seed": 1, "val_size": 4, "train_subset": 10})
    assert got.info.name == f"folder:{root}?image_size=8" and len(got.train) == 10 and len(got.val) == 4


def test_dataset_info_classes_round_trip_and_old_dicts():
    info = dataset_info("fashion-mnist")
    assert info.classes[0] == "T-shirt/top" and info.classes[-1] == "Ankle boot"
    assert dataset_info("digits").classes == tuple("0123456789")
    assert DatasetInfo.from_dict(info.to_dict()) == info and info.to_dict()["classes"][1] == "Trouser"
    # a checkpoint written before ``classes`` existed
    old = {"name": "digits", "in_channels": 1, "resolution": 8, "num_classes": 10, "mean": [0.3],
           "std": [0.4], "default_eps": 0.1}
    assert DatasetInfo.from_dict(old).classes == ()


def test_proc_kib_field_reads_one_key_in_bytes_and_none_when_missing(tmp_path):
    """The one ``/proc`` reader behind the memory checks and the measuring worker's peak memory."""
    from nasctl.procfs import proc_kib_field

    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       1000 kB\nMemAvailable:    250 kB\nVmHWM:  7 kB\nBroken:\n")
    assert proc_kib_field(str(f), "MemAvailable") == 250 * 1024
    assert proc_kib_field(str(f), "VmHWM") == 7 * 1024
    assert proc_kib_field(str(f), "Mem") is None  # a prefix of a key is not the key
    assert proc_kib_field(str(f), "Broken") is None
    assert proc_kib_field(str(tmp_path / "absent"), "MemAvailable") is None
    if Path("/proc/meminfo").exists():
        from nasctl.core import mem_available_bytes

        assert mem_available_bytes() > 0  # this machine's MemAvailable, read through the same function
