"""TAM-NAS question (c): fine-tune a searched subnet from its inherited weights, or train it from scratch?

``nasctl experiment finetune-vs-scratch --run RUN --members K --epochs N``: for K front members spread
over size (the knee among them; chosen among the members the search's fine-tune stage trained when it
trained enough of them) three arms, scored with the run's final attack on the test images the front
was scored on:

- ``inherited``: the supernet's weights as they are (BN recalibrated) -- the front's own test numbers
  from ``pareto.json`` (``final_clean_acc``, ``final_adv_acc``), not recomputed;
- ``finetuned``: N epochs of adversarial training from the inherited weights (:func:`train_and_save`,
  the recipe of ``nasctl finetune``); where the search's fine-tune stage already trained the member
  with this recipe and N, its recorded ``finetuned_*`` numbers are reused instead of retraining;
- ``scratch``: the same architecture re-initialised and trained with the same recipe and budget.

Each arm of each member is one cell (``results.jsonl``); the trained ones keep ``subnet.pt`` and
``result.json`` under ``<member>/<arm>/``. Outputs: ``finetune_vs_scratch.csv``, ``finetune_vs_scratch.png``,
``result.json``, ``summary.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.config import check_at_least_one
from nasctl.core import atomic_write_text, csv_text, resolve_device
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, run_scope
from nasctl.workers import WorkerPool, parse_workers, resolve_workers, worker_state

from ..training.subnet import FinetuneConfig
from . import folder as folder_mod
from .run_data import check_members, member_label, member_picks, open_run, study_run

log = logging.getLogger(__name__)

STUDY = "finetune-vs-scratch"
ARMS = ("inherited", "finetuned", "scratch")


@dataclass
class FinetuneScratchConfig(RunFolder):
    """``nasctl experiment finetune-vs-scratch``: which run and members, and the shared training budget."""

    run: str | None = None  # search run folder; None: the newest under run_root/search
    # front members spread over log(params), the knee among them; None: those the search's fine-tune stage
    # trained (6 by default), else min(6, front size)
    members: int | None = None
    epochs: int | None = None  # both trained arms; None: the search's fine-tune epochs (its results reused)
    lr: float = FinetuneConfig.lr  # nasctl finetune's recipe, for both arms: only the start differs
    batch_size: int = FinetuneConfig.batch_size
    attack_steps: int = FinetuneConfig.attack_steps  # PGD-7 training, step eps/4
    seed: int | None = None  # None: the run's (as its fine-tune stage)
    device: str = "auto"
    # worker processes training the cells side by side (nasctl/workers.py): auto = one one-thread worker
    # per thread this process was given (or per GPU), 1 = in this process
    workers: int | str = "auto"

    def validate(self) -> None:
        self.workers = parse_workers(self.workers)
        check_at_least_one(self, ("members", "epochs", "batch_size", "attack_steps"))
        if not self.lr > 0:
            raise NasctlError(f"--lr must be > 0, got {self.lr}")


def _member_dir(rec: dict[str, Any]) -> str:
    return f"{rec['params']}-{zlib.crc32(rec['genome'].encode()):08x}"


def run_finetune_scratch(cfg: FinetuneScratchConfig, resume: str | Path | None = None) -> Path:
    """Run (or with ``resume``, finish) the study; returns the experiment folder."""
    cfg.validate()
    folder, run_dir, doc = study_run(cfg.run, cfg.run_root, resume)
    if folder is not None:
        picks, epochs = [int(i) for i in folder.config["members"]], int(folder.config["epochs"])
    else:
        epochs = cfg.epochs or int((doc.get("finetune") or {}).get("epochs") or FinetuneConfig.epochs)
        picks = choose_members(cfg, doc, run_dir, epochs)
    run = open_run(run_dir, doc)
    if folder is None:
        folder = folder_mod.start(cfg, STUDY, [str(run_dir)], {"members": picks, "epochs": epochs})
    with run_scope(folder.path):
        return _execute(cfg, folder, run, picks, epochs)


def choose_members(cfg: FinetuneScratchConfig, doc: dict[str, Any], run_dir: Path, epochs: int) -> list[int]:
    """Front indices to compare: spread over log(params) with the knee, taken among the members the
    search's fine-tune stage already trained with this recipe where there are enough (their fine-tuned
    arm is then reused, not retrained), else over the whole front."""
    front, knee = doc["front"], int(doc["knee"])
    seed = cfg.seed if cfg.seed is not None else int(doc.get("seed") or 0)
    tuned = [i for i, r in enumerate(front) if _reusable(r, cfg, epochs, seed, int(doc.get("seed") or 0))]
    k = cfg.members if cfg.members is not None else (len(tuned) or min(6, len(front)))
    check_members(k, run_dir, front)
    if tuned and k <= len(tuned):
        sub = [front[i] for i in tuned]
        return [tuned[j] for j in member_picks(sub, tuned.index(knee) if knee in tuned else -1, k)]
    return member_picks(front, knee, k)


def _reusable(rec: dict[str, Any], cfg: FinetuneScratchConfig, epochs: int, seed: int, run_seed: int) -> bool:
    """Whether the search's fine-tune stage trained this member exactly as this study would."""
    default = FinetuneConfig()
    return (
        "finetuned_adv_acc" in rec
        and int(rec.get("finetuned_epochs") or -1) == epochs
        and seed == run_seed
        and (cfg.lr, cfg.batch_size, cfg.attack_steps)
        == (default.lr, default.batch_size, default.attack_steps)
    )


def _execute(cfg, folder, run, picks, epochs) -> Path:
    device = resolve_device(cfg.device)
    seed = cfg.seed if cfg.seed is not None else run.seed
    final = run.final_attack
    done = folder.done()
    cells = []  # (cell, base row, how: "inherited" | "reused" | "trained", its folder, its config), in order
    for i in picks:
        rec = run.front[i]
        for arm in ARMS:
            cell = f"{i}:{arm}"
            if cell in done:
                continue
            base = {"member": i, "genome": rec["genome"], "params": rec["params"], "arm": arm,
                    "knee": i == run.knee}
            if arm == "inherited":
                cells.append((cell, base, "inherited", None, None))
            elif arm == "finetuned" and _reusable(rec, cfg, epochs, seed, run.seed):
                cells.append((cell, base, "reused", None, None))
            else:
                fcfg = FinetuneConfig(run=str(run.run_dir), pick=str(i), from_scratch=arm == "scratch",
                                      epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                      attack_steps=cfg.attack_steps, eps=run.eps,
                                      final_steps=int(final.get("steps") or 20),
                                      final_restarts=int(final.get("restarts") or 3), seed=seed,
                                      device=cfg.device)
                cells.append((cell, base, "trained", folder.path / _member_dir(rec) / arm, fcfg))
    todo = [c for c in cells if c[2] == "trained" and not (c[3] / "result.json").is_file()]
    with contextlib.ExitStack() as stack:
        trained = iter(_train_cells(cfg, stack, run, todo, device))
        for cell, base, how, out, _ in cells:
            rec = run.front[base["member"]]
            if how == "inherited":
                row = {"clean_acc": rec["final_clean_acc"], "adv_acc": rec["final_adv_acc"], "epochs": 0,
                       "from": "pareto.json (final_clean_acc, final_adv_acc)"}
            elif how == "reused":
                row = {"clean_acc": rec["finetuned_clean_acc"], "adv_acc": rec["finetuned_adv_acc"],
                       "epochs": epochs,
                       "from": f"the search's fine-tune stage ({rec.get('finetuned_checkpoint')})"}
            else:
                if (out / "result.json").is_file():  # trained before a kill between its result and its line
                    result = json.loads((out / "result.json").read_text())
                else:
                    result = next(trained)
                row = {"clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"],
                       "epochs": result["epochs"],
                       "from": str((out / result["checkpoint"]).relative_to(folder.path)),
                       "train_seconds": result.get("train_seconds")}
            done[cell] = folder.append(cell, {**base, **row})
    return _finish(folder, run, picks, epochs, done)


def _source(run, base: dict[str, Any]) -> dict[str, Any]:
    return {"run": str(run.run_dir), "front_index": base["member"], "knee": base["knee"],
            "supernet": run.loaded.path, "weights": "scratch" if base["arm"] == "scratch" else "inherited"}


def _train_cells(cfg, stack: contextlib.ExitStack, run, todo: list, device):
    """The trained cells' results, in order: in this process, or by worker processes (each loads the run
    once) with the parent saving every cell's ``subnet.pt`` and ``result.json``."""
    import torch

    from ..runs.finetune import save_member, train_and_save

    cores = torch.get_num_threads() if device.type == "cpu" else None
    n = min(resolve_workers(cfg.workers, str(device), cores), len(todo))
    if n <= 1:
        for _, base, _, out, fcfg in todo:
            log.info("%s: %s (%s params, %d epochs)", "fine-tuning" if base["arm"] == "finetuned" else
                     "training from scratch", base["genome"], f"{base['params']:,}", fcfg.epochs)
            out.mkdir(parents=True, exist_ok=True)
            model = run.subnet(base["genome"])  # BN recalibrated as the search scored it
            yield train_and_save(model, base["genome"], run.loaded, run.data, fcfg, run.eps, out,
                                 _source(run, base), device)
        return
    pool = stack.enter_context(WorkerPool(n, _init_worker, (str(run.run_dir), run.doc, run.eps),
                                          device=str(device)))
    items = [(base["genome"], fcfg) for _, base, _, _, fcfg in todo]
    def labels(item) -> str:
        return f"{'training from scratch' if item[1].from_scratch else 'fine-tuning'} {item[0]}"

    for (_, base, _, out, fcfg), (result, state) in zip(todo, pool.map(_cell_task, items, labels)):
        out.mkdir(parents=True, exist_ok=True)
        model = run.loaded.supernet.extract(run.loaded.space.parse(base["genome"]))  # the shape to load into
        model.load_state_dict(state)
        yield save_member(model, run.loaded, fcfg, run.eps, out, _source(run, base), result)


def _init_worker(device: str, run_dir: str, doc: dict[str, Any], eps: float):
    import torch

    return open_run(Path(run_dir), doc, eps), torch.device(device)


def _cell_task(item) -> tuple[dict[str, Any], dict]:
    """One trained cell in a worker: the member's subnet (BN as the search scored it), trained."""
    from ..runs.finetune import train_member

    genome, fcfg = item
    run, device = worker_state()
    model = run.subnet(genome)
    result = train_member(model, genome, run.data, fcfg, run.eps, device)
    return result, {k: v.cpu() for k, v in model.state_dict().items()}


def _finish(folder, run, picks, epochs, done) -> Path:
    front, knee = run.front, run.knee
    rows, csv_rows = [], []
    for i in picks:
        r = {arm: done[f"{i}:{arm}"] for arm in ARMS}
        rows.append(
            [
                member_label(i, front[i], knee),
                front[i]["genome"],
                *[v for arm in ARMS for v in (r[arm]["clean_acc"], r[arm]["adv_acc"])],
                r["finetuned"]["adv_acc"] - r["scratch"]["adv_acc"],
            ]
        )
        csv_rows.append(
            [
                i,
                front[i]["genome"],
                front[i]["params"],
                *[f"{v:.2f}" for arm in ARMS for v in (r[arm]["clean_acc"], r[arm]["adv_acc"])],
            ]
        )
    columns = [
        "member",
        "genome",
        "inherited clean %",
        "inherited PGD %",
        "fine-tuned clean %",
        "fine-tuned PGD %",
        "scratch clean %",
        "scratch PGD %",
        "fine-tuned - scratch PGD",
    ]
    header = ["front_index", "genome", "params",
              *[f"{a}_{m}" for a in ARMS for m in ("clean_acc", "adv_acc")]]
    atomic_write_text(folder.path / "finetune_vs_scratch.csv", csv_text([header, *csv_rows]))
    fa = run.final_attack
    attack = f"PGD-{fa.get('steps')} x{fa.get('restarts')}"
    plot_arms(
        folder.path / "finetune_vs_scratch.png",
        [member_label(i, front[i], knee) for i in picks],
        np.array([[done[f"{i}:{a}"]["clean_acc"] for a in ARMS] for i in picks]),
        np.array([[done[f"{i}:{a}"]["adv_acc"] for a in ARMS] for i in picks]),
        f"{epochs} epochs each; test {attack}, eps {run.eps:g}",
    )
    diffs = np.array([row[-1] for row in rows])
    gains = np.array([done[f"{i}:finetuned"]["adv_acc"] - done[f"{i}:inherited"]["adv_acc"] for i in picks])
    findings = [
        f"Fine-tuning beats training from scratch on PGD accuracy for {int((diffs > 0).sum())} of "
        f"{len(picks)} members (mean {diffs.mean():+.1f} points) with the same {epochs}-epoch budget.",
        f"Fine-tuning adds {gains.mean():+.1f} points (mean) of PGD accuracy to the inherited weights.",
    ]
    title = (
        f"Clean and PGD test accuracy ({attack}, eps {run.eps:g}, {len(run.data.test)} test images) of "
        f"{len(picks)} front members: inherited weights, fine-tuned from them and trained from scratch, "
        f"{epochs} epochs of PGD-{FinetuneConfig.attack_steps} adversarial training each (* knee)."
    )
    folder.finish(
        title,
        {"columns": columns, "rows": rows},
        ["finetune_vs_scratch.png"],
        findings,
        {
            "members": picks,
            "epochs": epochs,
            "csv": "finetune_vs_scratch.csv",
            "cells": [done[f"{i}:{a}"] for i in picks for a in ARMS],
        },
    )
    return folder.path


def plot_arms(path: Path, labels: list[str], clean: np.ndarray, adv: np.ndarray, title: str) -> None:
    """Grouped bars per member: PGD accuracy of each arm (solid) with its clean accuracy (outline)."""
    from ..render.outputs import _figure, _save

    fig = _figure(figsize=(2 + 1.6 * len(labels), 4))
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.26
    for k, arm in enumerate(ARMS):
        pos = x + (k - 1) * width
        ax.bar(pos, clean[:, k], width, fill=False, edgecolor=f"C{k}", linewidth=1.2)
        ax.bar(pos, adv[:, k], width, color=f"C{k}", label=f"{arm} (PGD; outline: clean)")
        for p, v in zip(pos, adv[:, k]):
            ax.text(p, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8, rotation=15)
    ax.set_ylabel("test accuracy %")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
