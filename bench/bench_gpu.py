"""Benchmark: supernet adversarial-training throughput on one device, float32 against AMP.

    python bench/bench_gpu.py --device cuda --out bench/results/gpu.json
    python bench/bench_gpu.py --device cpu --images 512 --out bench/results/gpu_cpu_ref.json

Two workloads, each one untimed warm-up epoch then ``--epochs`` timed epochs of the real
:class:`nasctl.nas.training.supernet.Trainer` loop (uniform path sampling, PGD-7, batch ``--batch-size``):

* ``digits``: the default space on the embedded 8x8 digits (what ``nasctl search`` trains);
* ``tam32``: the ``tam`` space (13 layers, all block types) on CIFAR-shaped 32x32x3 images with 10
  classes. The pixels are random: this measures speed only, no accuracy (no CIFAR-10 download is
  possible on the machines that measured it). Real CIFAR-10 would train at the same rate;
* ``fmnist``: the built-in ``mnist`` space on real Fashion-MNIST (``--data-dir``, or Debian's files),
  a seeded class-balanced subset of ``--images`` training images: what
  ``configs/fashion-mnist-gpu.yaml`` trains, so its supernet time is epochs x 55,000 / images_per_s.

``--batch-size`` takes a comma list (``128,512``): tiny nets leave a GPU launch-bound, so the batch
size, not the arithmetic, sets the rate.

Each row records images/s (adversarial images through forward+backward per second, the Trainer's own
counter), seconds per epoch and, for ``digits``, the validation accuracy after the timed epochs, so
that an AMP row that trains to garbage shows up.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from nasctl.nas.data import DatasetInfo, DataSplits, TensorSplit, load_dataset, subset_train
from nasctl.nas.training.supernet import TrainConfig, Trainer


def synthetic_cifar(n: int, seed: int = 0) -> DataSplits:
    """Random uint8 32x32x3 images with 10 balanced labels: a speed-only stand-in for CIFAR-10."""
    g = torch.Generator().manual_seed(seed)
    info = DatasetInfo("synthetic32", 3, 32, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 8 / 255)

    def split(m: int) -> TensorSplit:
        x = torch.randint(0, 256, (m, 3, 32, 32), dtype=torch.uint8, generator=g)
        return TensorSplit(x, torch.arange(m, dtype=torch.int64) % 10)

    return DataSplits(info, split(n), split(256), split(256))


def workload_data(name: str, args) -> tuple[str, DataSplits]:
    """The space and the data of one workload."""
    if name == "digits":
        return "digits", load_dataset("digits", seed=0)
    if name == "fmnist":
        data = load_dataset("fashion-mnist", data_dir=args.data_dir, seed=0)
        return "mnist", subset_train(data, args.images, 0)
    if name == "tam32":
        return "tam", synthetic_cifar(args.images)
    raise SystemExit(f"unknown workload {name!r}: choose from digits, fmnist, tam32")


def measure(label: str, space: str, data: DataSplits, amp: bool, batch_size: int, args) -> dict:
    cfg = TrainConfig(dataset=data.info.name, space=space, epochs=args.epochs + 1, batch_size=batch_size,
                      eps_warmup=0, eval_every=10_000, device=args.device, amp=amp)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), data=data)
        trainer.cfg.epochs = 10**6  # keep train_epoch from validating: we time training alone
        trainer.train_epoch()  # warm-up (cuDNN autotuning, allocator)
        rates, secs = [], []
        for _ in range(args.epochs):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            m = trainer.train_epoch()
            rates.append(m.images_per_s)
            secs.append(m.seconds)
        row = {"workload": label, "space": space, "amp": amp,
               "amp_dtype": str(trainer.amp_dtype) if trainer.use_amp else None,
               "batch_size": batch_size, "train_images": len(data.train),
               "images_per_s": sorted(rates)[len(rates) // 2],
               "seconds_per_epoch": sorted(secs)[len(secs) // 2],
               "params_largest": sum(p.numel() for p in trainer.supernet.extract(trainer.space.largest())
                                     .parameters())}
        if label == "digits":
            trainer.cfg.eval_size = 200
            row["val_after"] = trainer.check_paths()
    val = f"  val {row['val_after']}" if "val_after" in row else ""
    print(f"{label:>7} batch={batch_size:<4} amp={str(amp):<5} {row['images_per_s']:>9.0f} img/s  "
          f"{row['seconds_per_epoch']:.2f} s/epoch{val}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per row (median reported)")
    ap.add_argument("--batch-size", default="128", help="one or more batch sizes, comma-separated")
    ap.add_argument("--images", type=int, default=8192,
                    help="training images per epoch (tam32: synthetic; fmnist: a balanced subset)")
    ap.add_argument("--data-dir", default=None, help="fmnist: Fashion-MNIST's files (default: Debian's)")
    ap.add_argument("--workloads", default="digits,tam32")
    ap.add_argument("--out", default="bench/results/gpu.json")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    result = {"device": args.device, "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "machine": platform.processor() or platform.machine(), "epochs_timed": args.epochs, "rows": []}
    t0 = time.perf_counter()
    for w in args.workloads.split(","):
        space, data = workload_data(w, args)
        for batch_size in (int(b) for b in args.batch_size.split(",")):
            for amp in ((False, True) if dev.type == "cuda" else (False,)):
                result["rows"].append(measure(w, space, data, amp, batch_size, args))
    result["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
