"""A user's own images as a data set: ``folder:DIR`` (a tree of image files) or ``npz:FILE`` (arrays).

The data set *name* carries everything needed to reload the same images, because the name is what every
config and checkpoint stores and what later stages (search, fine-tune, export) reload from::

    folder:/abs/DIR?image_size=32&channels=3&test_fraction=0.3&skip_bad_images=1
    npz:/abs/FILE.npz

:func:`dataset_spec` makes the canonical string (absolute path; only the options that differ from the
default, always in that order); :func:`nasctl.nas.data.load_dataset`, ``dataset_info``,
``default_space`` and ``supernet_data`` take it like a built-in name. The built-in space for these sets
is ``"auto"``.

``folder:DIR`` reads torchvision's ImageFolder layout, one folder per class (classes: the sorted folder
names; images within a class: sorted relative paths, subfolders included), either

* ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, optionally ``DIR/val/<class>/*`` (all with the
  same class folders); or
* ``DIR/<class>/*`` alone: a class-stratified ``test_fraction`` (default 0.2) becomes the test split.
  That split is drawn with a fixed seed (:data:`TEST_SPLIT_SEED`), not the run's, so every run of a
  folder is scored on the same test images, as with a set that ships its own test split.

Val is carved from train with the run's seed exactly as for the built-in sets (``val_size``, default
5,000 or 10 % of small train sets: same train/test arrays and seed, same split). With ``DIR/val/``,
those images are the val split: all of them by default, or a seeded random ``val_size`` of them
(larger is an error); train is then not cut. Val is always in seeded random order.

Images: PNG, JPEG, BMP, WebP (and PPM/PGM/TIFF) by extension; other files and hidden ones (``.*``,
e.g. macOS's ``._x.jpg``) are ignored and counted in the log. Grayscale images (``L``, ``1``, ``LA``,
16-bit, palettes of grays) give one channel; any colour image makes the set RGB (the gray ones are
replicated); ``channels=1|3`` converts instead (Pillow's conversion; alpha is dropped). ``image_size=N``
resizes every image to NxN (Pillow bilinear, antialiased; the aspect ratio is not kept); without it all
images must be square and of one size. Decoding runs in :func:`os.sched_getaffinity` processes that
import Pillow and numpy only (never torch), and its result is cached as uint8 arrays in an uncompressed
``.npz`` under :func:`cache_dir`, keyed by the file list, sizes, mtimes and options: a second load
starts at once, and a file added, removed or touched decodes afresh. Nothing is written into ``DIR``.

``npz:FILE`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally ``x_val``/``y_val``
(used as ``DIR/val/`` is) and ``classes``: images uint8 (0..255), other integers in 0..255, or floats
in [0, 1]; NHWC, NCHW (told apart by the channel axis: 1 or 3 in exactly one of positions 1 and 3) or
[N, H, W] grayscale; square. It takes no options: save the arrays as they should be used.

:class:`~nasctl.nas.data.DatasetInfo` of these sets: ``name`` the canonical spec, mean/std per channel
of the train split after the val carve-out (of the seed loaded; ``dataset_info(spec)`` gives seed 0's
with the default val size), ``default_eps`` 8/255, ``classes`` the folder names (npz: ``classes`` or
"0", "1", ...).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasctl.core import atomic_write_json, atomic_write_with, did_you_mean, mem_available_bytes
from nasctl.errors import NasctlError

if TYPE_CHECKING:  # torch and .splits (which imports torch) are imported where used: decoding workers
    import torch  # import this module and must stay free of torch and its threads

    from .splits import DatasetInfo, DataSplits

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # progress(images decoded so far, images in all)

KINDS = ("folder", "npz")
OPTIONS = ("image_size", "channels", "test_fraction", "skip_bad_images")  # the canonical order
DEFAULT_TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0  # the class-only layout's test split: the same for every run seed
USER_EPS = 8 / 255  # the usual L-inf radius of natural-image sets (CIFAR-10, SVHN)
MAX_IMAGE_SIZE = 4096
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2  # a file's split in the folder listing (the class-only layout: all TRAIN)
CACHE_FORMAT = 1  # bump when what is cached, or how it is decoded, changes: old entries are then missed
# Bytes a set needs per uint8 pixel: the decoded array, the train/val/test tensors cut from it, and the
# float32 batches and copies that training and attacks make on top.
MEMORY_FACTOR = 4
PARALLEL_MIN_IMAGES = 512  # below this, starting processes costs more than it saves
MAX_CHUNK = 1024  # images per task sent to a decoding process


def _flag(opt: str) -> str:
    return f"--{opt.replace('_', '-')}"


# --- the spec string ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSpec:
    """A parsed ``folder:`` or ``npz:`` name: ``path`` absolute, options validated."""

    kind: str  # "folder" or "npz"
    path: str
    image_size: int | None = None  # None: the images' own (square, one) size
    channels: int | None = None  # None: decided by the images
    test_fraction: float = DEFAULT_TEST_FRACTION  # class-only folders: share of each class held out as test
    skip_bad_images: bool = False  # leave out (and count) images that cannot be decoded instead of failing

    def encode(self) -> str:
        """The canonical string: :func:`parse_spec` of it gives this spec back."""
        opts = []
        if self.image_size is not None:
            opts.append(f"image_size={self.image_size}")
        if self.channels is not None:
            opts.append(f"channels={self.channels}")
        if self.test_fraction != DEFAULT_TEST_FRACTION:
            opts.append(f"test_fraction={self.test_fraction!r}")
        if self.skip_bad_images:
            opts.append("skip_bad_images=1")
        # a '?' in the path itself is kept apart from the options by a last '?', empty or not
        tail = "?" + "&".join(opts) if opts or "?" in self.path else ""
        return f"{self.kind}:{self.path}{tail}"


def is_user_spec(name: str) -> bool:
    """Whether ``name`` names a user's images (``folder:...`` or ``npz:...``) rather than a built-in set."""
    kind, colon, _ = str(name).strip().partition(":")
    return bool(colon) and kind.lower() in KINDS


def _from_text(opt: str, raw: str, name: str) -> Any:
    raw = raw.strip()
    try:
        if opt == "test_fraction":
            return float(raw)
        if opt == "skip_bad_images":
            flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
            return flags[raw.lower()]
        return int(raw)
    except (ValueError, KeyError):
        want = "1 or 0" if opt == "skip_bad_images" else "a number"
        raise NasctlError(f"option {opt}={raw!r} in data set {name!r} must be {want}") from None


def _validated(kind: str, path: str, image_size: Any, channels: Any, test_fraction: Any,
               skip_bad_images: Any) -> UserSpec:
    if not str(path).strip():
        raise NasctlError(f"{kind}: needs a path: {kind}:{'DIR' if kind == 'folder' else 'FILE.npz'}")
    whole = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if image_size is not None and (not whole or not 2 <= image_size <= MAX_IMAGE_SIZE):
        raise NasctlError(f"image_size ({_flag('image_size')}) must be a whole number of pixels from 2 to "
                          f"{MAX_IMAGE_SIZE}, got {image_size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise NasctlError(f"channels ({_flag('channels')}) must be 1 (grayscale) or 3 (RGB), "
                          f"got {channels!r}")
    if test_fraction is None:
        test_fraction = DEFAULT_TEST_FRACTION
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating))
            or not 0 < test_fraction < 1):
        raise NasctlError(f"test_fraction ({_flag('test_fraction')}) must be between 0 and 1 (exclusive), "
                          f"got {test_fraction!r}")
    if not isinstance(skip_bad_images, (bool, np.bool_)):
        raise NasctlError(f"skip_bad_images must be true or false, got {skip_bad_images!r}")
    spec = UserSpec(kind, os.path.abspath(os.path.expanduser(str(path).strip())),
                    None if image_size is None else int(image_size),
                    None if channels is None else int(channels), float(test_fraction), bool(skip_bad_images))
    if kind == "npz":
        given = [o for o in OPTIONS if getattr(spec, o) != getattr(UserSpec("npz", ""), o)]
        if given:
            raise NasctlError(f"{_flag(given[0])} ({given[0]}) does not apply to npz:{spec.path}: an .npz "
                              "file is used as saved (its own splits, size and channels); leave it out, or "
                              "save the arrays the way they should be used")
    return spec


def parse_spec(name: str) -> UserSpec:
    """Parse ``folder:DIR?opt=value&...`` or ``npz:FILE``; a relative path is made absolute (from the
    current folder). Unknown options, repeated ones and bad values raise :class:`NasctlError`."""
    text = str(name).strip()
    kind, colon, rest = text.partition(":")
    kind = kind.lower()
    if not colon or kind not in KINDS:
        raise NasctlError(f"{name!r} is not folder:DIR or npz:FILE")
    path, _, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    values: dict[str, Any] = {}
    for item in query.split("&"):
        if not item.strip():
            continue
        key, eq, raw = item.partition("=")
        opt = key.strip().lower().replace("-", "_")
        if opt not in OPTIONS:
            raise NasctlError(f"unknown option {key.strip()!r} in data set {name!r}"
                              f"{did_you_mean(opt, OPTIONS)} (options: {', '.join(OPTIONS)})")
        if not eq:
            raise NasctlError(f"option {opt!r} in data set {name!r} needs a value: {opt}=VALUE")
        if opt in values:
            raise NasctlError(f"option {opt!r} is given twice in data set {name!r}")
        values[opt] = _from_text(opt, raw, name)
    return _validated(kind, path, values.get("image_size"), values.get("channels"),
                      values.get("test_fraction"), values.get("skip_bad_images", False))


def dataset_spec(name: str, image_size: int | None = None, channels: int | None = None,
                 test_fraction: float | None = None, skip_bad_images: bool = False) -> str:
    """The canonical data set name for ``name`` plus the command line's options, as stored in configs.

    A built-in name comes back unchanged (options for it are an error naming the option). A
    ``folder:``/``npz:`` name comes back with an absolute path and its options (those in the name and
    these arguments; the same option with two values is an error) in the fixed order of :data:`OPTIONS`,
    defaults left out: ``folder:/data/pets?image_size=64``. Only the name is checked, not the files.
    """
    given = {"image_size": image_size, "channels": channels, "test_fraction": test_fraction,
             "skip_bad_images": skip_bad_images or None}
    if not is_user_spec(name):
        extra = [opt for opt, v in given.items() if v is not None]
        if extra:
            raise NasctlError(f"{_flag(extra[0])} applies to your own images (--dataset folder:DIR or "
                              f"npz:FILE), not to the built-in data set {name!r}: leave it out")
        return name  # a built-in name: the registry's dataset_spec checks it
    spec = parse_spec(name)
    merged = {}
    for opt, value in given.items():
        have = getattr(spec, opt)
        in_name = have != getattr(UserSpec(spec.kind, ""), opt)
        if value is not None and in_name and have != value:
            raise NasctlError(f"{opt} is given twice with different values: {have!r} in the data set name "
                              f"{name!r} and {value!r} as {_flag(opt)}; give it once")
        merged[opt] = have if value is None else value
    return _validated(spec.kind, spec.path, **merged).encode()


# --- cache -------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where decoded folders are kept: ``$NASCTL_CACHE_DIR/images`` if set, else
    ``$XDG_CACHE_HOME/nasctl/images`` (``~/.cache/nasctl/images``)."""
    base = os.environ.get("NASCTL_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "images"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "nasctl" / "images"


@dataclass(frozen=True)
class _Listing:
    """The image files of a folder, in load order (train, val, test; class; sorted path)."""

    root: Path
    split_layout: bool  # DIR/train/ and DIR/test/ (else DIR/<class>/ alone)
    classes: tuple[str, ...]
    files: tuple[str, ...]  # relative to root, '/'-separated
    labels: np.ndarray  # int64 [N]
    parts: np.ndarray  # uint8 [N]: TRAIN, VAL or TEST
    stamps: tuple[tuple[int, int], ...]  # (size in bytes, mtime in ns) per file; (-1, -1) when unreadable
    ignored: int  # files that are not images by their extension

    def key(self, spec: UserSpec) -> str:
        """Hex SHA-256 of the format version, the options and every file's path, size and mtime."""
        h = hashlib.sha256(json.dumps([CACHE_FORMAT, spec.image_size, spec.channels, spec.test_fraction,
                                       spec.skip_bad_images]).encode())
        for rel, (size, mtime) in zip(self.files, self.stamps):
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()


def _cache_path(spec: UserSpec, listing: _Listing) -> Path:
    # one entry per spec: a new one replaces the spec's stale ones (prefix), other specs keep theirs
    prefix = hashlib.sha256(spec.encode().encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}-{listing.key(spec)[:40]}.npz"


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path, root: Path) -> tuple[list[str], list[tuple[int, int]], int]:
    """Image files under ``folder`` (paths relative to ``root``, in torchvision's ImageFolder order), their
    (size, mtime) and the number of other, non-hidden files. Plain strings: 70,000 files take ~0.3 s."""
    walked, other = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        walked.append((dirpath, filenames))
    found, stamps = [], []
    for dirpath, filenames in sorted(walked):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(f"{rel}/{f}")
                stamps.append(_stamp(os.path.join(dirpath, f)))
            else:
                other += 1
    return found, stamps, other


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:  # a dangling link: decoding names it
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _scan(spec: UserSpec) -> _Listing:
    """List the folder and check its layout; every problem is one :class:`NasctlError` naming it."""
    root = Path(spec.path)
    where = f"folder:{root}"
    if not root.exists():
        raise NasctlError(f"{where}: {root} does not exist; check the path")
    if not root.is_dir():
        hint = f" (for arrays saved with numpy use npz:{root})" if root.suffix == ".npz" else ""
        raise NasctlError(f"{where}: {root} is not a folder; folder: takes a folder of class folders{hint}")
    subdirs = _subfolders(root)
    layout = (f"{root}/<class>/<image> (one folder per class) or {root}/train/<class>/ and "
              f"{root}/test/<class>/")
    if not subdirs:
        loose = _images_in(root, root)[0]
        if loose:
            raise NasctlError(f"{where}: {root} holds {len(loose)} images but no class folders: put each "
                              f"class's images in a folder of its own, {root}/<class>/")
        raise NasctlError(f"{where}: {root} is empty: expected {layout}")
    if "train" in subdirs:
        if "test" not in subdirs:
            raise NasctlError(f"{where}: {root}/train/ has no {root}/test/ beside it: add the test images as "
                              f"{root}/test/<class>/, or put the class folders directly in {root} to have "
                              f"a test split carved out ({_flag('test_fraction')})")
        if spec.test_fraction != DEFAULT_TEST_FRACTION:
            raise NasctlError(f"{where}: test_fraction ({_flag('test_fraction')}) applies to a folder of "
                              f"class folders only; {root} has its own test/ split: leave it out")
        others = [d for d in subdirs if d not in SPLIT_FOLDERS]
        if others:
            log.warning("ignoring %s in %s: beside train/ and test/ only val/ is read", others, root)
        parts = [p for p in SPLIT_FOLDERS if p in subdirs]
    elif "test" in subdirs or "val" in subdirs:
        raise NasctlError(f"{where}: {root} has {'test' if 'test' in subdirs else 'val'}/ but no train/: "
                          f"put the training images in {root}/train/<class>/ (or drop the split folders and "
                          "keep the class folders only)")
    else:
        parts = [""]
    class_sets = {p: _subfolders(root / p) for p in parts}
    classes = class_sets[parts[0]]
    for p in parts:
        if not class_sets[p]:
            raise NasctlError(f"{where}: {root / p} holds no class folders: expected "
                              f"{root / p}/<class>/<image>")
        if class_sets[p] != classes:
            lacks = sorted(set(classes) - set(class_sets[p]))
            extra = sorted(set(class_sets[p]) - set(classes))
            said = "; ".join(s for s in (f"{p}/ lacks {lacks}" if lacks else "",
                                         f"{p}/ has {extra}, which train/ lacks" if extra else "") if s)
            raise NasctlError(f"{where}: the class folders of {root / p} differ from those of {root}/train: "
                              f"{said}; every split needs the same class folders")
    if len(classes) < 2:
        raise NasctlError(f"{where}: {root / parts[0]} holds one class folder ({classes[0]!r}): a classifier "
                          "needs at least two classes, one folder each")
    files, stamps, labels, part_of, ignored = [], [], [], [], 0
    for p in parts:
        for c, cls in enumerate(classes):
            found, stamped, other = _images_in(root / p / cls, root)
            ignored += other
            if not found:
                raise NasctlError(f"{where}: the class folder {root / p / cls} holds no images ({other} "
                                  f"other files; images are {', '.join(IMAGE_EXTENSIONS)})")
            files += found
            stamps += stamped
            labels += [c] * len(found)
            part_of += [SPLIT_FOLDERS.index(p) if p else TRAIN] * len(found)
    if len(parts) == 1:  # files beside the class folders
        ignored += sum(1 for e in os.scandir(root) if e.is_file() and not e.name.startswith("."))
    if ignored:
        log.info("ignoring %d files in %s that are not images (by their extension: %s)", ignored, root,
                 " ".join(IMAGE_EXTENSIONS))
    return _Listing(root, len(parts) > 1, tuple(classes), tuple(files), np.asarray(labels, dtype=np.int64),
                    np.asarray(part_of, dtype=np.uint8), tuple(stamps), ignored)


@dataclass(frozen=True)
class _Decoded:
    images: np.ndarray  # uint8 [N, C, H, W], rows of the listing that decoded
    labels: np.ndarray  # int64 [N]
    parts: np.ndarray  # uint8 [N]


def _read_cache(path: Path, listing: _Listing) -> _Decoded | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            got = _Decoded(z["images"], z["labels"], z["parts"])
    except (OSError, ValueError, KeyError, EOFError) as e:
        log.warning("the cache %s cannot be read (%s): decoding again", path, e)
        return None
    n = len(got.labels)
    if got.images.ndim != 4 or len(got.images) != n or len(got.parts) != n or n > len(listing.files):
        log.warning("the cache %s does not match its folder: decoding again", path)
        return None
    return got


def _write_cache(path: Path, decoded: _Decoded) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # uncompressed: loading it back is a plain read
            np.savez(f, images=decoded.images, labels=decoded.labels, parts=decoded.parts)

    try:
        atomic_write_with(path, write)
    except OSError as e:  # a full or read-only cache costs the next run a decode, not this one its data
        log.warning("could not cache the decoded images in %s (%s); the next load decodes again", path, e)
        return
    _drop_stale(path)


def _info_path(path: Path) -> Path:
    """Beside a cache entry: its :class:`DatasetInfo` at seed 0 and the default val size, as JSON."""
    return path.with_suffix(".info.json")


def _drop_stale(path: Path) -> None:
    """Remove the entries of the same spec made from an older state of its folder."""
    for stale in path.parent.glob(f"{path.name.split('-')[0]}-*"):
        if stale.name.split(".")[0] != path.stem:
            stale.unlink(missing_ok=True)


# --- decoding (runs in worker processes: Pillow and numpy only) --------------------------------------


def _natural(im: Any) -> Any:
    """``im`` as ``L`` (grayscale sources) or ``RGB`` (colour ones)."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit PNG/TIFF: scale to 8 bits, not clip
        a = np.asarray(im).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        if a.min(initial=0) < 0 or a.max(initial=0) > 255 * scale:
            raise ValueError(f"pixel values {a.min()}..{a.max()} of mode {mode} are not 8- or 16-bit")
        return Image.fromarray(np.rint(a / scale).astype(np.uint8), "L")
    if mode in ("1", "L", "LA", "La"):
        return im.convert("L")
    if mode in ("P", "PA"):
        rgb = im.convert("RGB")
        a = np.asarray(rgb)
        gray = bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
        return Image.fromarray(np.ascontiguousarray(a[..., 0]), "L") if gray else rgb
    return im.convert("RGB")


def _decode_one(path: str, image_size: int | None, channels: int | None) -> np.ndarray:
    """One image as uint8 [H, W] (grayscale) or [H, W, 3] (colour)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        out = _natural(im)
        if channels is not None:  # convert before resizing: what Pillow would give for the converted image
            out = out.convert("L" if channels == 1 else "RGB")
        if image_size is not None and out.size != (image_size, image_size):
            out = out.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.uint8)


def _decode_chunk(start: int, paths: Sequence[str], image_size: int | None,
                  channels: int | None) -> tuple[int, list[np.ndarray | None], list[str]]:
    """Decode ``paths`` (rows ``start``... of the listing): arrays (None for a bad file) and one line per
    bad file saying why."""
    arrays: list[np.ndarray | None] = []
    bad = []
    for path in paths:
        try:
            arrays.append(_decode_one(path, image_size, channels))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a broken file makes Pillow raise, it is that file's
            arrays.append(None)
            why = " ".join(str(e).split()) or type(e).__name__
            bad.append(f"{path} ({type(e).__name__}: {why})")
    return start, arrays, bad


def _worker_init() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _check_memory(what: str, n: int, pixel_bytes: int, shape: str, fix: Callable[[int], str]) -> None:
    """Refuse, before any work, a set whose pixels (times :data:`MEMORY_FACTOR`) exceed MemAvailable;
    ``fix(available bytes)`` says what to do."""
    avail = mem_available_bytes()
    need = pixel_bytes * MEMORY_FACTOR
    if avail is None or need <= avail:
        return
    raise NasctlError(f"{what} holds {n:,} images of {shape}: about {_size(need)} in memory "
                      f"({MEMORY_FACTOR}x the {_size(pixel_bytes)} of pixels, for the splits and the float "
                      f"copies training makes), but only {_size(avail)} are available; {fix(avail)}")


_GRAYISH = ("1", "L", "LA", "La", "I", "F", "P")  # modes that may decode to one channel


def _peek(paths: Sequence[str], spec: UserSpec) -> tuple[int, int, int]:
    """(height, width, channels) the first readable image will have once decoded: for the memory check."""
    from PIL import Image

    for path in paths[:16]:
        try:
            with Image.open(path) as im:
                w, h = im.size
                colour = im.mode not in _GRAYISH and not im.mode.startswith("I;16")
        except Exception:  # noqa: BLE001 - decoding names it
            continue
        if spec.image_size is not None:
            h = w = spec.image_size
        return h, w, spec.channels or (3 if colour else 1)
    return 1, 1, 1


def _in_processes(procs: int, tasks: list[tuple], take: Callable[[Any], None], root: Path) -> bool:
    """Run the decoding tasks in ``procs`` fresh processes (forkserver, else spawn: nothing of this
    process, torch's threads included, is inherited); False when no process can be started here."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    try:
        pool = concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx, initializer=_worker_init)
    except OSError as e:  # no working semaphores (some sandboxes)
        log.warning("cannot start decoding processes (%s): decoding in this one", e)
        return False
    try:
        futures = [pool.submit(_decode_chunk, *task) for task in tasks]
        for fut in concurrent.futures.as_completed(futures):
            take(fut.result())
    except concurrent.futures.process.BrokenProcessPool as e:
        raise NasctlError(f"a process decoding the images of {root} died ({e}); out of memory? pass "
                          f"{_flag('image_size')} N to decode smaller images") from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return True


def _decode_all(spec: UserSpec, listing: _Listing,
                progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every listed file: uint8 [N, C, H, W] and which listed files they are (bool per file; with
    ``skip_bad_images`` the bad ones are left out)."""
    root, n = listing.root, len(listing.files)
    paths = [str(root / f) for f in listing.files]
    h, w, c = _peek(paths, spec)

    def fix(avail: int) -> str:
        fit = int(math.sqrt(avail / (n * c * MEMORY_FACTOR)))
        if fit < 8:
            return "use fewer images"
        return f"pass {_flag('image_size')} {min(fit, h)} or smaller (image_size=N), or use fewer images"

    _check_memory(f"folder:{root}", n, n * h * w * c, f"{w}x{h}x{c}", fix)
    procs = 1 if n < PARALLEL_MIN_IMAGES else min(_workers(), math.ceil(n / 64))
    chunk = max(16, min(MAX_CHUNK, math.ceil(n / (procs * 8))))
    log.info("decoding %d images of %s with %d processes", n, root, procs)
    t0 = time.perf_counter()
    arrays: list[np.ndarray | None] = [None] * n
    bad: list[str] = []
    done = 0

    def take(result: tuple[int, list[np.ndarray | None], list[str]]) -> None:
        nonlocal done
        start, got, why = result
        arrays[start:start + len(got)] = got
        bad.extend(why)
        done += len(got)
        if progress is not None:
            progress(done, n)

    tasks = [(s, paths[s:s + chunk], spec.image_size, spec.channels) for s in range(0, n, chunk)]
    if procs == 1 or not _in_processes(procs, tasks, take, root):
        for task in tasks:
            take(_decode_chunk(*task))
    if bad and not spec.skip_bad_images:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NasctlError(f"folder:{root}: cannot decode {bad[0]}{more}; replace or delete the file, or pass "
                          f"{_flag('skip_bad_images')} (skip_bad_images=1) to leave such images out")
    keep = [a for a in arrays if a is not None]
    if bad:
        log.warning("skipped %d of %d images of %s that cannot be decoded (first: %s)", len(bad), n, root,
                    bad[0])
    if not keep:
        raise NasctlError(f"folder:{root}: none of its {n} images can be decoded")
    sizes = Counter((a.shape[1], a.shape[0]) for a in keep)
    if len(sizes) > 1:
        first = {}
        for a, f in zip(arrays, listing.files):
            if a is not None:
                first.setdefault((a.shape[1], a.shape[0]), f)
        seen = ", ".join(f"{w}x{h} ({c:,} images, e.g. {first[w, h]})" for (w, h), c in sizes.most_common(4))
        more = f" and {len(sizes) - 4} more sizes" if len(sizes) > 4 else ""
        raise NasctlError(f"folder:{root}: the images have {len(sizes)} different sizes: {seen}{more}; pass "
                          f"{_flag('image_size')} N (image_size=N) to resize them all to NxN")
    (w, h), = sizes
    if w != h:
        raise NasctlError(f"folder:{root}: the images are {w}x{h} (width x height), not square; pass "
                          f"{_flag('image_size')} N (image_size=N) to resize them to NxN (the aspect ratio "
                          "is not kept: crop them first where it matters)")
    c = 3 if any(a.ndim == 3 for a in keep) else 1
    out = np.empty((len(keep), c, h, w), dtype=np.uint8)
    for i, a in enumerate(keep):
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # a gray image in a colour set: replicated
    log.info("decoded %d images of %s (%dx%d, %s) in %.1f s", len(keep), root, w, h,
             "RGB" if c == 3 else "grayscale", time.perf_counter() - t0)
    return out, np.asarray([a is not None for a in arrays], dtype=bool)


# --- splits and info ----------------------------------------------------------------------------------


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels in [0, 1] (in chunks: no float copy of the whole split)."""
    x = images.numpy()
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    c = x.shape[1]
    s, ss, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), 2048):
        part = x[i:i + 2048].astype(np.float64) / scale
        s += part.sum(axis=(0, 2, 3))
        ss += np.square(part).sum(axis=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = s / max(count, 1)
    std = np.sqrt(np.maximum(ss / max(count, 1) - mean**2, 0.0))
    # a channel that never changes would divide by zero inside the model: floor its std
    return tuple(round(float(m), 4) for m in mean), tuple(max(round(float(v), 4), 1e-3) for v in std)


def _stratified_test(labels: np.ndarray, fraction: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, train rows), both in file order: ``fraction`` of every class (rounded; at least one
    image of a class stays in train) drawn with :data:`TEST_SPLIT_SEED`."""
    rng = np.random.default_rng(TEST_SPLIT_SEED)
    test = []
    for c in range(int(labels.max()) + 1):
        rows = np.flatnonzero(labels == c)
        k = min(int(math.floor(len(rows) * fraction + 0.5)), len(rows) - 1)
        test.append(rows[rng.permutation(len(rows))[:k]])
    test_rows = np.sort(np.concatenate(test))
    if not len(test_rows):
        raise NasctlError(f"{where}: a test fraction of {fraction} of {len(labels)} images leaves no test "
                          f"image; pass a larger {_flag('test_fraction')} or add images")
    return test_rows, np.setdiff1d(np.arange(len(labels)), test_rows)


def _splits(name: str, where: str, source: Path, classes: Sequence[str],
            parts: dict[int, tuple[torch.Tensor, torch.Tensor]], seed: int,
            val_size: int | None) -> DataSplits:
    """Train / val / test from the official parts (TRAIN and TEST, VAL optional), info from train."""
    import torch

    from .splits import DatasetInfo, DataSplits, _split, official_splits

    train, test = parts[TRAIN], parts[TEST]
    c, res = int(train[0].shape[1]), int(train[0].shape[2])
    info = DatasetInfo(name, c, res, len(classes), (0.5,) * c, (0.5,) * c, USER_EPS, tuple(classes))
    if VAL not in parts:
        splits = official_splits(info, source, *train, *test, seed, val_size)
    else:
        val = parts[VAL]
        n_val = len(val[1])
        v = n_val if val_size is None else int(val_size)
        if not 0 <= v <= n_val:
            raise NasctlError(f"{where}: val size {v} must be between 0 and {n_val}, the images of its own "
                              f"val split; pass a smaller --val-size or leave it out to use them all")
        rng = np.random.default_rng(seed)
        val_rows = rng.permutation(n_val)[:v]
        train_rows = rng.permutation(len(train[1]))
        splits = DataSplits(info, _split(*train, train_rows), _split(*val, val_rows),
                            _split(*test, np.arange(len(test[1]))))
        log.info("loaded %s from %s: train %d, val %d (of %d in val/), test %d", name, source,
                 len(splits.train), v, n_val, len(splits.test))
    seen = torch.bincount(splits.train.labels, minlength=len(classes))
    if bool((seen == 0).any()):
        empty = [classes[i] for i in torch.flatnonzero(seen == 0).tolist()]
        raise NasctlError(f"{where}: no training image of class {empty[0]!r} is left once val is carved out; "
                          f"add images of it or pass a smaller --val-size")
    mean, std = _channel_stats(splits.train.images)
    return dataclasses.replace(splits, info=dataclasses.replace(info, mean=mean, std=std))


def _folder_splits(spec: UserSpec, listing: _Listing, decoded: _Decoded, seed: int,
                   val_size: int | None) -> DataSplits:
    import torch

    where = f"folder:{listing.root}"
    images, labels = torch.from_numpy(decoded.images), torch.from_numpy(decoded.labels)
    counts = np.bincount(decoded.labels, minlength=len(listing.classes))
    if (counts == 0).any():  # every image of a class failed to decode (skip_bad_images)
        lost = listing.classes[int(np.flatnonzero(counts == 0)[0])]
        raise NasctlError(f"{where}: none of the images of class {lost!r} can be decoded")
    if listing.split_layout:  # the parts are contiguous (train, val, test): views, not copies
        bounds = np.searchsorted(decoded.parts, [TRAIN, VAL, TEST, TEST + 1])
        parts = {p: (images[bounds[p]:bounds[p + 1]], labels[bounds[p]:bounds[p + 1]])
                 for p in (TRAIN, VAL, TEST) if bounds[p + 1] > bounds[p]}
        for p in (TRAIN, TEST):  # only when skipping bad images: a listed split always has images
            if p not in parts:
                raise NasctlError(f"{where}: none of the images in {listing.root / SPLIT_FOLDERS[p]} can be "
                                  "decoded")
    else:
        test_rows, train_rows = _stratified_test(decoded.labels, spec.test_fraction, where)
        tr, te = torch.from_numpy(train_rows), torch.from_numpy(test_rows)
        parts = {TRAIN: (images[tr], labels[tr]), TEST: (images[te], labels[te])}
    return _splits(spec.encode(), where, listing.root, listing.classes, parts, seed, val_size)


def decoded_images(spec: UserSpec, progress: Progress | None,
                   listing: _Listing | None = None) -> tuple[_Listing, _Decoded]:
    """The folder's images from the cache, or decoded (and then cached): the one door to the pixels, so
    a second run (or a test) with the same folder starts from the cache."""
    listing = listing or _scan(spec)
    path = _cache_path(spec, listing)
    t0 = time.perf_counter()
    hit = _read_cache(path, listing)
    if hit is not None:
        log.info("read %d decoded images of %s from the cache %s in %.2f s", len(hit.labels), listing.root,
                 path, time.perf_counter() - t0)
        if progress is not None:
            progress(len(hit.labels), len(hit.labels))
        return listing, hit
    images, keep = _decode_all(spec, listing, progress)
    got = _Decoded(images, listing.labels[keep], listing.parts[keep])
    _write_cache(path, got)
    return listing, got


def _remember_info(spec: UserSpec, listing: _Listing, info: DatasetInfo) -> None:
    """Keep seed 0's info beside the cache entry, so ``dataset_info`` later reads no pixels."""
    path = _info_path(_cache_path(spec, listing))
    if path.parent.is_dir() and not path.exists():
        try:
            atomic_write_json(path, info.to_dict())
        except OSError as e:
            log.warning("could not cache the data set info in %s (%s)", path, e)


# --- npz files -----------------------------------------------------------------------------------------

NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("x_val", "y_val", "classes")
_NPZ_FIX = ("np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...) (optionally x_val, y_val, "
            "classes)")


def _npz_layout(key: str, a: np.ndarray, where: str) -> str:
    """NHW, NHWC or NCHW: the channel axis (1 or 3 entries) must be exactly one of axes 1 and 3."""
    if a.ndim == 3:
        return "NHW"
    fix = ("save grayscale images as [N, H, W] and colour ones as NHWC [N, H, W, 3] (from NCHW: "
           "np.transpose(x, (0, 2, 3, 1)))")
    if a.ndim != 4:
        raise NasctlError(f"{where}: {key} has shape {a.shape}; images must be NHWC [N, H, W, C], NCHW "
                          f"[N, C, H, W] or [N, H, W]: {fix}")
    fits = [layout for layout, axis in (("NHWC", 3), ("NCHW", 1)) if a.shape[axis] in (1, 3)]
    if not fits:
        raise NasctlError(f"{where}: {key} has shape {a.shape}: neither axis 3 (NHWC) nor axis 1 (NCHW) is a "
                          f"channel axis of 1 (gray) or 3 (RGB) channels; {fix}")
    if len(fits) > 1:
        raise NasctlError(f"{where}: cannot tell whether {key} of shape {a.shape} is NHWC or NCHW (axes 1 "
                          f"and 3 could both be channels); {fix}")
    return fits[0]


def _cast_within(a: np.ndarray, top: float, dtype: type, subject: str, held: str, rule: str) -> np.ndarray:
    """``a`` as ``dtype`` once every value is known to lie in 0..``top``; else the one error of both pixel
    kinds: ``subject`` holds ``held`` (formatted with the ``lo`` and ``hi`` found); ``rule``."""
    lo, hi = a.min().item(), a.max().item()
    if lo < 0 or hi > top:
        raise NasctlError(f"{subject} holds {held.format(lo=lo, hi=hi)}; {rule}")
    return a.astype(dtype)


def _npz_pixels(key: str, a: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is, other integers in 0..255 as uint8, floats in [0, 1] as float32; NCHW, square."""
    if len(a) == 0:
        raise NasctlError(f"{where}: {key} holds no images")
    layout = _npz_layout(key, a, where)
    if a.dtype == np.uint8:
        pass
    elif a.dtype.kind in "iu":
        a = _cast_within(a, 255, np.uint8, f"{where}: {key}", "integers {lo}..{hi}",
                         "pixels must be 0..255 (uint8) or floats in [0, 1]")
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise NasctlError(f"{where}: {key} holds NaN or infinite values; pixels must be floats in [0, 1]")
        a = _cast_within(a, 1, np.float32, f"{where}: {key}", "floats from {lo:g} to {hi:g}",
                         "float pixels must lie in [0, 1] (divide 0..255 values by 255, or save them as "
                         "uint8)")
    else:
        raise NasctlError(f"{where}: {key} has dtype {a.dtype}; pixels must be uint8 (0..255) or floats in "
                          "[0, 1]")
    if layout == "NHW":
        a = a[:, None]
    elif layout == "NHWC":
        a = a.transpose(0, 3, 1, 2)
    if a.shape[2] != a.shape[3]:
        raise NasctlError(f"{where}: the images of {key} are {a.shape[3]}x{a.shape[2]} (width x height), not "
                          "square; crop or resize them to NxN before saving")
    return np.ascontiguousarray(a)


def _npz_labels(key: str, y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NasctlError(f"{where}: {key} has shape {y.shape}; labels must be one class number per image, "
                          "shape [N] (one-hot labels: y.argmax(1))")
    if y.dtype.kind not in "iu":
        raise NasctlError(f"{where}: {key} has dtype {y.dtype}; labels must be integers (class numbers "
                          "0..K-1)")
    if len(y) != n:
        raise NasctlError(f"{where}: {key} holds {len(y):,} labels but x_{key[2:]} holds {n:,} images; "
                          "both must have one entry per image")
    return y.astype(np.int64)


def _npz_pixel_bytes(z: Any, keys: Sequence[str]) -> tuple[int, int]:
    """(images, bytes once loaded: uint8 1, other types 4 per pixel), read from the .npy headers alone."""
    n = size = 0
    for key in keys:
        fmt = np.lib.format
        try:
            with z.zip.open(f"{key}.npy") as f:
                version = fmt.read_magic(f)
                read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
                if read is None:  # a newer header version: loading the array will tell
                    continue
                shape, _, dtype = read(f)
        except (KeyError, ValueError, OSError):  # not a plain .npy member: loading the array will tell
            continue
        n += shape[0] if shape else 0
        size += math.prod(shape) * (1 if dtype == np.uint8 else 4)
    return n, size


def _npz_splits(spec: UserSpec, seed: int, val_size: int | None) -> DataSplits:
    import torch

    path = Path(spec.path)
    where = f"npz:{path}"
    if not path.exists():
        raise NasctlError(f"{where}: {path} does not exist; check the path")
    if path.is_dir():
        raise NasctlError(f"{where}: {path} is a folder; for a folder of images use folder:{path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise NasctlError(f"{where}: {path} is not a numpy .npz file ({' '.join(str(e).split())}); save the "
                          f"arrays with {_NPZ_FIX}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise NasctlError(f"{where}: the file holds one array, not named arrays; save them with {_NPZ_FIX}")
    with z:
        keys = set(z.files)
        missing = [k for k in NPZ_REQUIRED if k not in keys]
        extra = sorted(keys - set(NPZ_REQUIRED) - set(NPZ_OPTIONAL))
        if missing:
            raise NasctlError(f"{where}: the file lacks {', '.join(missing)}"
                              f"{did_you_mean(missing[0], extra)} (it holds "
                              f"{', '.join(sorted(keys)) or 'nothing'}); save it with {_NPZ_FIX}")
        if ("x_val" in keys) != ("y_val" in keys):
            raise NasctlError(f"{where}: the file has {'x_val' if 'x_val' in keys else 'y_val'} without "
                              f"{'y_val' if 'x_val' in keys else 'x_val'}: give both or neither")
        if extra:
            log.warning("ignoring arrays %s in %s", extra, path)
        splits = [s for s in ("train", "val", "test") if f"x_{s}" in keys]
        n, size = _npz_pixel_bytes(z, [f"x_{s}" for s in splits])
        _check_memory(where, n, size, "the saved size", lambda avail: "save fewer or smaller images")
        try:
            x = {s: _npz_pixels(f"x_{s}", z[f"x_{s}"], where) for s in splits}
            y = {s: _npz_labels(f"y_{s}", z[f"y_{s}"], len(x[s]), where) for s in splits}
            names = z["classes"] if "classes" in keys else None
        except ValueError as e:  # object arrays (allow_pickle=False)
            raise NasctlError(f"{where}: the file holds Python objects ({e}); save plain arrays: numbers for "
                              "images and labels, np.array(names, dtype=str) for classes") from e
    shapes = {s: a.shape[1:] for s, a in x.items()}
    if len(set(shapes.values())) > 1:
        raise NasctlError(f"{where}: the splits' images differ in shape (channels, height, width): "
                          f"{', '.join(f'{s} {v}' for s, v in shapes.items())}; all must be alike")
    top = max(int(v.max()) for v in y.values())
    if names is not None:
        if names.ndim != 1:
            raise NasctlError(f"{where}: classes has shape {names.shape}; it must list one name per class")
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist())
        if top >= len(classes):
            raise NasctlError(f"{where}: the labels go up to {top} ({top + 1} classes) but classes names "
                              f"{len(classes)}; give one name per class, in label order")
    else:
        classes = tuple(str(i) for i in range(top + 1))
    for s, v in y.items():
        if int(v.min()) < 0:
            raise NasctlError(f"{where}: y_{s} holds label {int(v.min())}; labels are class numbers "
                              f"0..{len(classes) - 1}")
    if len(classes) < 2:
        raise NasctlError(f"{where}: the labels name one class only; a classifier needs at least two")
    parts = {p: (torch.from_numpy(x[s]), torch.from_numpy(y[s]))
             for p, s in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")) if s in x}
    return _splits(spec.encode(), where, path, classes, parts, seed, val_size)


@functools.lru_cache(maxsize=16)
def _npz_info(spec: UserSpec, size: int, mtime_ns: int) -> DatasetInfo:
    # keyed by the file's size and mtime: a changed file is read again
    return _npz_splits(spec, 0, None).info


# --- the registry entry ----------------------------------------------------------------------------------


def user_info(spec: UserSpec, progress: Progress | None = None) -> DatasetInfo:
    """The :class:`~nasctl.nas.data.DatasetInfo` of a user's set at seed 0 and the default val size.

    A folder is decoded the first time (then cached); later calls read only the cached info. An npz file
    is read once per process (and again when it changes)."""
    from .splits import DatasetInfo

    if spec.kind == "npz":
        try:
            st = os.stat(spec.path)
        except OSError:
            return _npz_splits(spec, 0, None).info  # says what is wrong with the path
        return _npz_info(spec, st.st_size, st.st_mtime_ns)
    listing = _scan(spec)
    path = _info_path(_cache_path(spec, listing))
    if path.is_file():
        try:
            return DatasetInfo.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("the cached info %s cannot be read (%s): computing it again", path, e)
    listing, decoded = decoded_images(spec, progress, listing)
    info = _folder_splits(spec, listing, decoded, 0, None).info
    _remember_info(spec, listing, info)
    return info


@dataclass(frozen=True)
class UserLoader:
    """The :class:`~nasctl.nas.data.DatasetLoader` of a ``folder:`` or ``npz:`` name (``data_dir`` and
    ``download`` are ignored: the name holds the path). ``progress(done, total)`` hears of decoding."""

    spec: UserSpec
    progress: Progress | None = None
    default_space: str = "auto"  # a space sized from the images' resolution and classes

    @property
    def info(self) -> DatasetInfo:
        return user_info(self.spec, self.progress)

    def __call__(self, data_dir: str | os.PathLike | None, seed: int, val_size: int | None,
                 download: bool) -> DataSplits:
        if self.spec.kind == "npz":
            return _npz_splits(self.spec, seed, val_size)
        listing, decoded = decoded_images(self.spec, self.progress)
        splits = _folder_splits(self.spec, listing, decoded, seed, val_size)
        if seed == 0 and val_size is None:
            _remember_info(self.spec, listing, splits.info)
        return splits


def user_loader(name: str, progress: Progress | None = None) -> UserLoader:
    """The registry entry for ``folder:...`` / ``npz:...`` (see :func:`parse_spec`)."""
    return UserLoader(parse_spec(name), progress)
