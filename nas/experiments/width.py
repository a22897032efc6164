"""TAM-NAS question (b): how does the supernet's width change the front it yields?

``nasctl experiment width --width-mult 0.5,1.0,1.5``: for each width multiplier (it multiplies every
channel choice of the space) a supernet is trained and searched with *the same* budget -- by default
a reduced one, stated in the result, so that three widths on digits fit in under 10 minutes on 2 CPU
cores: 30 supernet epochs (the default is 60), NSGA-II with population 16 for 8 generations, the
front scored with PGD-20 x 1 on the test split, no fine-tune stage. Each width's supernet and search
run live inside the experiment folder (``w<mult>/supernet/``, ``w<mult>/search/``); both resume.

The fronts are compared on one footing:

- hypervolume of each front against one common reference point (1.1) with one common *scale*: every
  size objective is divided by the largest subnet of the widest space (a run's own hypervolume divides
  by its own largest subnet, which would make a narrow space look bigger than it is);
- the best test PGD accuracy (inherited weights) of a front member within each of a few parameter
  budgets (``--param-budgets``; default five log-spaced budgets over the range every front reaches):
  robustness at matched size.

Outputs: ``width_table.csv`` (widths) and ``width_budgets.csv`` (budgets x widths), ``width_fronts.png``,
``result.json``, ``summary.md``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.config import check_at_least_one
from nasctl.core import atomic_write_text, csv_text
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, run_scope, write_run_config
from nasctl.workers import parse_workers

from ..search.front import HV_REFERENCE, hypervolume
from ..space import check_width
from . import folder as folder_mod

log = logging.getLogger(__name__)

STUDY = "width"


@dataclass
class WidthConfig(RunFolder):
    """``nasctl experiment width``: the widths, and the one budget every width gets (reduced, stated)."""

    width_mult: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5])
    dataset: str = "digits"
    data_dir: str | None = None
    space: str | None = None  # None: the data set's own
    epochs: int = 30  # supernet epochs: half the default 60, so three widths fit in 10 minutes on 2 cores
    train_subset: int | None = None  # a class-balanced training subset (28x28 sets on a CPU)
    pop_size: int = 16  # NSGA-II population (default 20)
    generations: int = 8  # (default 10)
    pgd_steps: int = 10  # search-time proxy, as the search's default
    val_size: int = 200
    final_steps: int = 20  # the front on the test split: PGD-20
    final_restarts: int = 1  # (the search's default: 3)
    test_size: int | None = None  # score the fronts on the first N test images (None: all)
    param_budgets: list[int] | None = None  # None: five log-spaced budgets over the range all fronts reach
    seed: int = 0
    device: str = "auto"
    # worker processes for each width's candidates and front evaluation (the search's --workers: auto =
    # one one-thread worker per core or GPU); the supernet of each width trains in this process
    workers: int | str = "auto"

    def validate(self) -> None:
        self.workers = parse_workers(self.workers)
        if not self.width_mult:
            raise NasctlError("--width-mult needs at least one width multiplier, e.g. 0.5,1.0,1.5")
        for w in self.width_mult:
            check_width(w)
        if len(set(self.width_mult)) != len(self.width_mult):
            raise NasctlError(f"--width-mult lists a width twice: {self.width_mult}")
        check_at_least_one(
            self,
            (
                "epochs",
                "pop_size",
                "generations",
                "pgd_steps",
                "val_size",
                "final_steps",
                "final_restarts",
                "test_size",
            ),
        )
        if self.param_budgets is not None and (not self.param_budgets or min(self.param_budgets) < 1):
            raise NasctlError(f"--param-budgets must be positive parameter counts, got {self.param_budgets}")
        for w in self.width_mult:  # each width's supernet must fit in memory (refused before any is trained)
            self.train_config(w).validate()
        self.search_config("x", self.width_mult[0]).validate()

    def train_config(self, width: float):
        from ..training.supernet import TrainConfig

        return TrainConfig(
            dataset=self.dataset,
            data_dir=self.data_dir,
            space=self.space,
            width_mult=float(width),
            epochs=self.epochs,
            train_subset=self.train_subset,
            seed=self.seed,
            device=self.device,
        )

    def search_config(self, supernet: str, width: float):
        from ..search import SearchConfig

        return SearchConfig(
            supernet=supernet,
            dataset=self.dataset,
            data_dir=self.data_dir,
            pop_size=self.pop_size,
            generations=self.generations,
            pgd_steps=self.pgd_steps,
            val_size=self.val_size,
            final_steps=self.final_steps,
            final_restarts=self.final_restarts,
            test_size=self.test_size,
            finetune_members=0,
            seed=self.seed,
            device=self.device,
            workers=self.workers,
            name=f"w{width:g}",
        )

    def budget(self) -> str:
        subset = (
            f", supernets on a class-balanced subset of {self.train_subset:,} images"
            if self.train_subset
            else ""
        )

        images = f" ({self.test_size:,} images)" if self.test_size else ""
        return (
            f"{self.epochs} supernet epochs (PGD-7), NSGA-II population {self.pop_size} x {self.generations} "
            f"generations (PGD-{self.pgd_steps} on {self.val_size} validation images), front scored with "
            f"PGD-{self.final_steps} x{self.final_restarts} on the test split{images}, no fine-tune stage, "
            f"seed {self.seed}{subset}"
        )


def _wdir(folder, width: float) -> Path:
    return folder.path / f"w{width:g}"


def run_width(cfg: WidthConfig, resume: str | Path | None = None) -> Path:
    """Run (or with ``resume``, finish) the width study; returns the experiment folder."""
    cfg.validate()
    folder = (
        folder_mod.reopen(resume)
        if resume is not None
        else folder_mod.start(cfg, STUDY, [], {"budget": cfg.budget()})
    )
    with run_scope(folder.path):
        return _execute(cfg, folder)


def _train(cfg: WidthConfig, width: float, sub: Path) -> Path:
    from ..training.supernet import resume_training, train_supernet

    if (sub / "supernet.pt").is_file():
        return sub / "supernet.pt"
    if (sub / "checkpoint.pt").is_file():
        return resume_training(sub)[0]
    sub.mkdir(parents=True, exist_ok=True)
    return train_supernet(cfg.train_config(width), run_dir=sub)[0]


def _search(cfg: WidthConfig, width: float, supernet: Path, run_dir: Path) -> Path:
    from ..runs.search import execute

    if (run_dir / "pareto.json").is_file():
        return run_dir / "pareto.json"
    scfg = cfg.search_config(str(supernet), width)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.json").is_file():
        write_run_config(run_dir, "search", scfg)
    return execute(scfg, run_dir)  # resumes from the run's archive.jsonl


def _execute(cfg: WidthConfig, folder) -> Path:
    done = folder.done()
    runs = [str(_wdir(folder, w) / "search") for w in cfg.width_mult]
    folder_mod.set_search_runs(folder, runs)
    for n, width in enumerate(cfg.width_mult, 1):
        cell = f"w{width:g}"
        if cell in done:
            continue
        t0 = time.perf_counter()
        log.info(
            "width %d/%d: x%g -- training the supernet (%d epochs)", n, len(cfg.width_mult), width, cfg.epochs
        )
        supernet = _train(cfg, width, _wdir(folder, width) / "supernet")
        t1 = time.perf_counter()
        log.info(
            "width %d/%d: x%g -- searching (population %d x %d generations)",
            n,
            len(cfg.width_mult),
            width,
            cfg.pop_size,
            cfg.generations,
        )
        pareto = _search(cfg, width, supernet, _wdir(folder, width) / "search")
        doc = json.loads(pareto.read_text())
        done[cell] = folder.append(
            cell,
            {
                "width_mult": width,
                "search_run": str(pareto.parent.relative_to(folder.path)),
                "supernet": str(supernet.relative_to(folder.path)),
                "train_seconds": t1 - t0,
                "search_seconds": time.perf_counter() - t1,
                "front_size": len(doc["front"]),
                "evaluations": doc["evaluations"],
                "scale": doc["scale"],
            },
        )
    return _finish(cfg, folder, done)


def common_scale(scales: list[dict[str, float]]) -> dict[str, float]:
    """Every size objective divided by the largest value any width's space has (the widest's)."""
    keys = set().union(*scales)
    return {k: max(float(s[k]) for s in scales if k in s) for k in keys}


def default_budgets(fronts: list[list[dict[str, Any]]], n: int = 5) -> list[int]:
    """``n`` log-spaced parameter budgets over the range every front reaches: from the largest of the
    fronts' smallest members to the smallest of their largest (where the ranges do not overlap: over
    all of them)."""
    mins = [min(r["params"] for r in f) for f in fronts]
    maxes = [max(r["params"] for r in f) for f in fronts]
    lo, hi = max(mins), min(maxes)
    if hi <= lo:
        lo, hi = min(mins), max(maxes)
    if hi <= lo:
        return [int(lo)]
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


def best_within(front: list[dict[str, Any]], budget: float, key: str = "final_adv_acc") -> float | None:
    vals = [r[key] for r in front if r["params"] <= budget]
    return max(vals) if vals else None


def compare(fronts: dict[float, dict[str, Any]], budgets: list[int] | None) -> dict[str, Any]:
    """The comparison the study reports, from each width's pareto.json (pure: tests call it)."""
    scale = common_scale([d["scale"] for d in fronts.values()])
    widths = list(fronts)
    budgets = budgets or default_budgets([fronts[w]["front"] for w in widths])
    per_width = []
    for w in widths:
        d = fronts[w]
        f = d["front"]
        per_width.append(
            {
                "width_mult": w,
                "front_size": len(f),
                "hypervolume": hypervolume(f, d["objectives"], scale),
                "own_hypervolume": hypervolume(f, d["objectives"], d["scale"]),
                "min_params": min(r["params"] for r in f),
                "max_params": max(r["params"] for r in f),
                "best_adv_acc": max(r["final_adv_acc"] for r in f),
                "best_clean_acc": max(r["final_clean_acc"] for r in f),
                "knee_params": f[d["knee"]]["params"],
                "knee_adv_acc": f[d["knee"]]["final_adv_acc"],
            }
        )
    matched = [
        {"budget": b, "best_adv_acc": {str(w): best_within(fronts[w]["front"], b) for w in widths}}
        for b in budgets
    ]
    return {
        "scale": scale,
        "reference_point": HV_REFERENCE,
        "widths": per_width,
        "matched": matched,
        "budgets": budgets,
    }


def _finish(cfg: WidthConfig, folder, done) -> Path:
    fronts = {}
    for w in cfg.width_mult:
        rec = done[f"w{w:g}"]
        fronts[w] = json.loads((folder.path / rec["search_run"] / "pareto.json").read_text())
    cmp = compare(fronts, cfg.param_budgets)
    for row in cmp["widths"]:
        rec = done[f"w{row['width_mult']:g}"]
        row.update(
            train_seconds=rec["train_seconds"],
            search_seconds=rec["search_seconds"],
            search_run=rec["search_run"],
        )
    widths = [str(w) for w in cfg.width_mult]
    columns = [
        "width",
        "front",
        "params range",
        "HV (common scale)",
        "best test PGD %",
        "best test clean %",
        "knee params",
        "knee test PGD %",
        "minutes",
    ] + [f"best PGD % <= {b:,} p" for b in cmp["budgets"]]
    rows = []
    for row in cmp["widths"]:
        w = str(row["width_mult"])
        rows.append(
            [
                f"x{row['width_mult']:g}",
                row["front_size"],
                f"{row['min_params']:,}-{row['max_params']:,}",
                f"{row['hypervolume']:.4f}",
                row["best_adv_acc"],
                row["best_clean_acc"],
                row["knee_params"],
                row["knee_adv_acc"],
                f"{(row['train_seconds'] + row['search_seconds']) / 60:.1f}",
                *[m["best_adv_acc"][w] for m in cmp["matched"]],
            ]
        )
    _write_csvs(folder.path, cmp, widths)
    plot_fronts(folder.path / "width_fronts.png", fronts, cmp)
    best = max(cmp["widths"], key=lambda r: r["hypervolume"])
    wins = {
        w: sum(
            1
            for m in cmp["matched"]
            if m["best_adv_acc"][w] is not None
            and m["best_adv_acc"][w] == max(v for v in m["best_adv_acc"].values() if v is not None)
        )
        for w in widths
    }
    findings = [
        f"Budget, the same for every width: {cfg.budget()}.",
        f"Width x{best['width_mult']:g} gives the largest hypervolume ({best['hypervolume']:.4f}; reference "
        f"{HV_REFERENCE} in every minimised objective, sizes over the widest space's largest subnet, "
        f"{cmp['scale'].get('params', 0):,.0f} params).",
        "At matched parameter budgets the best test PGD accuracy comes from "
        + ", ".join(f"x{float(w):g}: {n} of {len(cmp['matched'])} budgets" for w, n in wins.items())
        + ".",
    ]
    title = (
        f"Supernets of width {', '.join('x' + w for w in widths)} trained and searched with one budget; "
        f"their fronts compared (test accuracies with inherited weights)."
    )
    folder.finish(
        title,
        {"columns": columns, "rows": rows},
        ["width_fronts.png"],
        findings,
        {"comparison": cmp, "budget": cfg.budget(), "config": asdict(cfg), "csv": "width_table.csv"},
    )
    return folder.path


def _write_csvs(path: Path, cmp: dict[str, Any], widths: list[str]) -> None:
    keys = [
        "width_mult",
        "front_size",
        "min_params",
        "max_params",
        "hypervolume",
        "own_hypervolume",
        "best_adv_acc",
        "best_clean_acc",
        "knee_params",
        "knee_adv_acc",
        "train_seconds",
        "search_seconds",
    ]
    table = [[row[k] for k in keys] for row in cmp["widths"]]
    atomic_write_text(path / "width_table.csv", csv_text([keys, *table]))
    budgets = [
        [m["budget"], *["" if m["best_adv_acc"][x] is None else m["best_adv_acc"][x] for x in widths]]
        for m in cmp["matched"]
    ]
    header = ["param_budget", *[f"best_adv_acc_x{x}" for x in widths]]
    atomic_write_text(path / "width_budgets.csv", csv_text([header, *budgets]))


def plot_fronts(path: Path, fronts: dict[float, dict[str, Any]], cmp: dict[str, Any]) -> None:
    """Test PGD accuracy vs parameters of every width's front (best-so-far staircase), budgets marked."""
    from ..render.outputs import _figure, _save

    fig = _figure(figsize=(7, 4.2))
    ax = fig.subplots()
    hv = {r["width_mult"]: r["hypervolume"] for r in cmp["widths"]}
    for k, (w, d) in enumerate(fronts.items()):
        f = sorted(d["front"], key=lambda r: r["params"])
        p = [r["params"] for r in f]
        a = [r["final_adv_acc"] for r in f]
        ax.scatter(p, a, s=18, color=f"C{k}")
        ax.step(
            p,
            np.maximum.accumulate(a),
            where="post",
            color=f"C{k}",
            label=f"x{w:g} (HV {hv[w]:.3f}, {len(f)} members)",
        )
    for b in cmp["budgets"]:
        ax.axvline(b, color="0.8", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (dashed: the matched budgets)")
    ax.set_ylabel("test PGD accuracy % (inherited weights)")
    ax.set_title("front of each supernet width: best robustness within a parameter budget", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
