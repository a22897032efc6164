"""Candidate evaluation for the search: inherited weights, BN recalibration, clean and PGD accuracy.

Every number is a pure function of (supernet, genome, settings): the BN calibration batches are
fixed once per run, and the PGD random start of each genome comes from a generator seeded with the
run seed and a hash of the genome string. So a candidate evaluated after a resume, in another
order or in another batch gets exactly the same accuracy -- which is what makes a resumed search
reproduce the uninterrupted one. Only the validation split is used; the test split is reserved
for the final evaluation of the front.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass

import torch

from ..attacks import PGD, accuracy_under_attack
from ..data import DataSplits, TensorSplit
from ..space import Genome
from ..supernet import BNCalibration, Supernet, prepare_subnet


@dataclass(frozen=True)
class EvalSettings:
    pgd_steps: int = 10  # search-time proxy: PGD-10 (the final front gets PGD-20 with restarts)
    val_size: int = 200  # fixed validation subset (digits: the whole 200-image validation split)
    calib_batches: int = 4  # training batches used to recalibrate BatchNorm statistics
    calib_batch_size: int = 64
    eval_batch_size: int = 256


def genome_seed(seed: int, genome: Genome | str) -> int:
    return (seed * 1_000_003 + zlib.crc32(str(genome).encode())) % (2**63)


class CandidateEvaluator:
    """Accuracy of subnets with weights inherited from a trained supernet."""

    def __init__(self, supernet: Supernet, data: DataSplits, eps: float,
                 settings: EvalSettings = EvalSettings(),
                 seed: int = 0, device: torch.device | str = "cpu"):
        self.supernet, self.data, self.eps, self.s, self.seed = supernet, data, eps, settings, seed
        self.device = torch.device(device)
        self.supernet.to(self.device).eval()
        self.calibration = BNCalibration(settings.calib_batches, settings.calib_batch_size, seed)
        self.val: TensorSplit = data.val.subset(min(settings.val_size, len(data.val)))
        self.attack = PGD(eps=eps, steps=settings.pgd_steps)

    def settings(self) -> dict:
        return {**asdict(self.s), "eps": self.eps, "attack": self.attack.to_dict(), "split": "val",
                "val_images": len(self.val)}

    def subnet(self, genome: Genome) -> torch.nn.Module:
        """The extracted subnet with BatchNorm statistics recalibrated on the fixed batches."""
        return prepare_subnet(self.supernet.extract(genome), self.data.train, self.calibration, self.device)

    def accuracy(self, genome: Genome) -> dict[str, float]:
        t0 = time.perf_counter()
        sub = self.subnet(genome)
        r = accuracy_under_attack(sub, self.val, self.attack, self.device,
                                  seed=genome_seed(self.seed, genome), batch_size=self.s.eval_batch_size)
        return {"clean_acc": r.clean_acc, "adv_acc": r.adv_acc, "eval_seconds": time.perf_counter() - t0}


def final_accuracy(model: torch.nn.Module, genome: Genome | str, split: TensorSplit, eps: float, seed: int,
                   steps: int = 20, restarts: int = 3, device: torch.device | str = "cpu",
                   batch_size: int = 256) -> dict:
    """The final attack on a ready model (eval mode, BN statistics its own): PGD-``steps`` with
    ``restarts`` on ``split``, its random starts seeded by ``seed`` and the genome. One function for
    inherited and fine-tuned weights, so their numbers compare like for like."""
    attack = PGD(eps=eps, steps=steps, restarts=restarts)
    r = accuracy_under_attack(model, split, attack, torch.device(device), seed=genome_seed(seed, genome),
                              batch_size=batch_size)
    return {"clean_acc": r.clean_acc, "adv_acc": r.adv_acc, "attack": attack.to_dict(), "split": "test",
            "images": r.n}


def final_evaluation(evaluator: CandidateEvaluator, genome: Genome, split: TensorSplit, steps: int = 20,
                     restarts: int = 3) -> dict:
    """Strong re-evaluation of a front member (inherited weights) on the test split."""
    r = final_accuracy(evaluator.subnet(genome), genome, split, evaluator.eps, evaluator.seed + 1, steps,
                      restarts, evaluator.device, evaluator.s.eval_batch_size)
    return {"final_clean_acc": r["clean_acc"], "final_adv_acc": r["adv_acc"], "final_attack": r["attack"],
            "final_split": "test", "final_images": r["images"]}
