"""Benchmark: a folder of the user's own images (``folder:DIR``), decoded cold and read from the cache.

    python bench/bench_folder_decode.py

Writes Fashion-MNIST's 60,000 train and 10,000 test images (Debian's ``dataset-fashion-mnist`` files) as
PNG into ``bench/cache/fashion-mnist-png/{train,test}/<class>/<index>.png`` (once: skipped when the folder
is there), then times ``load_dataset("folder:...")`` twice in one process: first with an empty decode cache
(``NASCTL_CACHE_DIR`` a fresh folder under ``bench/cache``), then from the cache; and ``dataset_info`` of
the cached folder. The PNG files were written (or read) shortly before, so the first load reads them from
the page cache: it measures decoding, not a cold disk. Goals on 2 cores: under 60 s first, under 3 s from
the cache. Results: ``bench/results/folder_decode.json``.

Top-level imports stay light: the decoding processes import this script again (spawn/forkserver).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _write_chunk(folder: str, first: int, images, labels, names: list[str], pad_to: int | None = None,
                 rgb: bool = False) -> int:
    import numpy as np
    from PIL import Image

    for i, (a, y) in enumerate(zip(images, labels)):
        if pad_to:  # black border around the 28x28 image, as CIFAR-sized inputs
            p = pad_to - a.shape[0]
            a = np.pad(a, ((p // 2, p - p // 2), (p // 2, p - p // 2)))
        img = Image.fromarray(a).convert("RGB") if rgb else Image.fromarray(a)
        img.save(os.path.join(folder, names[int(y)], f"{first + i:05d}.png"))
    return len(labels)


def write_folder(dest: Path, limit: int | None, pad_to: int | None = None, rgb: bool = False) -> float | None:
    """Write the PNG folder (into ``dest.partial``, renamed when complete); None when it is there."""
    if dest.is_dir():
        return None
    import concurrent.futures
    import multiprocessing

    from nasctl.nas.data import FASHION_MNIST_CLASSES, read_idx

    t0 = time.perf_counter()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    names = [f"{c}-{n.replace('/', '_')}" for c, n in enumerate(FASHION_MNIST_CLASSES)]
    fix = "apt-get install dataset-fashion-mnist"
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(os.sched_getaffinity(0)), mp_context=ctx) as pool:
        futures = []
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz", 3, fix)[:limit]
            labels = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz", 1, fix)[:limit]
            for name in names:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for s in range(0, len(labels), 2000):
                futures.append(pool.submit(_write_chunk, str(tmp / split), s, images[s:s + 2000],
                                           labels[s:s + 2000], names, pad_to, rgb))
        written = sum(f.result() for f in futures)
    tmp.rename(dest)
    seconds = time.perf_counter() - t0
    print(f"wrote {written} PNG files into {dest} in {seconds:.1f} s", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=str(ROOT / "bench" / "cache" / "fashion-mnist-png"),
                    help="where the PNG folder is written (and read)")
    ap.add_argument("--limit", type=int, default=None,
                    help="only the first N images of each split (a quick check; use another --folder)")
    ap.add_argument("--pad-to", type=int, default=None, metavar="N",
                    help="pad each 28x28 image with a black border to N x N (32: CIFAR-sized inputs)")
    ap.add_argument("--rgb", action="store_true", help="write RGB PNGs (three equal channels)")
    ap.add_argument("--write-only", action="store_true", help="write the folder, time nothing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "folder_decode.json"))
    args = ap.parse_args()
    if not FASHION.is_dir():
        sys.exit(f"Fashion-MNIST is not in {FASHION}: apt-get install dataset-fashion-mnist")

    import logging
    import math

    import torch

    from nasctl.nas.data import dataset_info, load_dataset, userdata

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    folder = Path(args.folder).resolve()
    write_s = write_folder(folder, args.limit, args.pad_to, args.rgb)
    if args.write_only:
        return
    cache = ROOT / "bench" / "cache" / "folder_decode_cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["NASCTL_CACHE_DIR"] = str(cache)
    spec = f"folder:{folder}"

    t0 = time.perf_counter()
    first = load_dataset(spec, seed=0)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_dataset(spec, seed=0)
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = dataset_info(spec)
    info_s = time.perf_counter() - t0

    n = len(first.train) + len(first.val) + len(first.test)
    assert torch.equal(first.train.images, second.train.images) and info == first.info
    builtin = load_dataset("fashion-mnist", seed=0) if args.limit is None else None
    def pixel_sums(d) -> tuple[int, int]:  # of the official train split (train + val) and of test
        total = [int(s.images.sum(dtype=torch.int64)) for s in (d.train, d.val, d.test)]
        return total[0] + total[1], total[2]

    # the same images in another order (ImageFolder's, by class): equal sums per official split
    same_pixels = None if builtin is None else pixel_sums(first) == pixel_sums(builtin)
    result = {
        "spec": spec,
        "images": n,
        "processes": 1 if n < userdata.PARALLEL_MIN_IMAGES else min(userdata._workers(), math.ceil(n / 64)),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "first_s": round(first_s, 2),
        "cached_s": round(cached_s, 2),
        "dataset_info_cached_s": round(info_s, 3),
        "goal_first_s": 60,
        "goal_cached_s": 3,
        "png_write_s": None if write_s is None else round(write_s, 1),
        "png_bytes": sum(p.stat().st_size for p in folder.rglob("*.png")),
        "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()),
        "pixel_sums_match_builtin": same_pixels,
        "python": platform.python_version(),
        "versions": {m: __import__(m).__version__ for m in ("numpy", "PIL", "torch")},
        "machine": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
