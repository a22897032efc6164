"""TAM-NAS question (a): do adversarial examples transfer between the searched subnets?

``nasctl experiment transfer --run RUN --members K``: white-box PGD is crafted on each *source* --
the supernet's largest path and K front members spread over size (the knee among them) -- and the
adversarial images of every source are shown to every *target* (the K members). The result is a
(K + 1) x K matrix of robust accuracies (%): rows are sources (the largest path first), columns are
targets; a cell counts an image as robust when the target classifies both the clean and the
adversarial image correctly (as ``evaluate`` does). Where source == target the cell is the white-box
accuracy; by default the attack is the run's final one (PGD-20 x 3 restarts, same seeds), so the
diagonal reproduces the front's test PGD accuracy in ``pareto.json`` exactly.

Reading it: transfer from another model is normally *weaker* than white-box (higher accuracy). A
target whose accuracy under some transfer attack is *lower* than under white-box by more than
``masking_margin`` points is a red flag for gradient masking: its own gradients mislead PGD, and its
white-box number overstates its robustness. The study states this for the knee (and lists any other
member it applies to).

Networks use inherited weights with BatchNorm recalibrated as the search did (what the front's
numbers describe). One cell per source, appended to ``results.jsonl``; ``--resume`` skips finished
sources. Outputs: ``transfer_matrix.csv``, ``transfer_heatmap.png``, ``result.json``, ``summary.md``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasctl.config import check_at_least_one, check_eps
from nasctl.core import atomic_write_text, csv_text, resolve_device
from nasctl.errors import NasctlError
from nasctl.runfolder import RunFolder, run_scope
from nasctl.workers import WorkerPool, parse_workers, resolve_workers, worker_state

from . import folder as folder_mod
from .run_data import check_members, member_label, member_picks, open_run, study_run

log = logging.getLogger(__name__)

STUDY = "transfer"
LARGEST = "largest"


@dataclass
class TransferConfig(RunFolder):
    """``nasctl experiment transfer``: which run, how many members, the attack crafted on each source."""

    run: str | None = None  # search run folder; None: the newest under run_root/search
    members: int | None = (
        None  # front members, spread over log(params), the knee among them; None: min(5, front)
    )
    steps: int | None = None  # PGD steps on each source; None: the run's final attack (PGD-20)
    restarts: int | None = None  # None: the run's final attack (3): the diagonal is then the front's test PGD
    eps: float | None = None  # None: the search's
    masking_margin: float = 5.0  # points by which transfer may beat white-box before it is flagged
    seed: int | None = None  # None: the run's seed (the random starts of its final attack)
    device: str = "auto"
    # worker processes crafting on the sources side by side (nasctl/workers.py): auto = one one-thread
    # worker per thread this process was given (or per GPU), 1 = in this process
    workers: int | str = "auto"

    def validate(self) -> None:
        self.workers = parse_workers(self.workers)
        check_at_least_one(self, ("members", "steps", "restarts"))
        check_eps(self.eps)
        if not self.masking_margin >= 0:
            raise NasctlError(f"--masking-margin must be >= 0 points, got {self.masking_margin}")


def _craft_and_score(source, targets, split, attack, gen, device, batch_size: int = 256):
    """Adversarial images of ``source`` (batches of 256 and one generator, in ``evaluate``'s order, so
    the source's own row is what ``evaluate`` measures) and, per target, (clean correct, robust
    correct) counts on them."""
    import torch

    clean = np.zeros(len(targets), dtype=int)
    robust = np.zeros(len(targets), dtype=int)
    for x, y in split.batches(batch_size):
        x, y = x.to(device), y.to(device)
        x_adv = attack(source, x, y, gen)
        with torch.no_grad():
            for j, t in enumerate(targets):
                ok = t(x).argmax(1) == y
                clean[j] += int(ok.sum())
                robust[j] += int((ok & (t(x_adv).argmax(1) == y)).sum())
    return clean, robust


def run_transfer(cfg: TransferConfig, resume: str | Path | None = None) -> Path:
    """Run (or with ``resume``, finish) the transfer study; returns the experiment folder."""
    cfg.validate()
    folder, run_dir, doc = study_run(cfg.run, cfg.run_root, resume)
    if folder is not None:
        attack = folder.config["attack"]
        picks = [int(i) for i in folder.config["members"]]
    else:
        k = cfg.members if cfg.members is not None else min(5, len(doc["front"]))
        check_members(k, run_dir, doc["front"])
        picks = member_picks(doc["front"], int(doc["knee"]), k)
    run = open_run(run_dir, doc, cfg.eps)  # fails on a missing or replaced supernet before any folder exists
    final = run.final_attack
    steps = cfg.steps or int(final.get("steps") or 20)
    restarts = cfg.restarts or int(final.get("restarts") or 1)
    seed = cfg.seed if cfg.seed is not None else run.seed
    if folder is not None:  # as recorded: a resumed study finishes with the attack it started with
        steps, restarts, seed = int(attack["steps"]), int(attack["restarts"]), int(attack["seed"])
    else:
        folder = folder_mod.start(
            cfg,
            STUDY,
            [str(run_dir)],
            {
                "members": picks,
                "attack": {"steps": steps, "restarts": restarts, "eps": run.eps, "seed": seed},
            },
        )
    with run_scope(folder.path):
        return _execute(cfg, folder, run, picks, steps, restarts, seed)


def _execute(cfg, folder, run, picks, steps, restarts, seed) -> Path:
    import torch

    from ..attacks import PGD

    device = resolve_device(cfg.device)
    front = run.front
    largest = run.loaded.space.largest().encode()
    sources = [(LARGEST, largest, None)] + [(f"member:{i}", front[i]["genome"], i) for i in picks]
    targets = {i: run.subnet(front[i]["genome"]).to(device) for i in picks}
    attack = PGD(eps=run.eps, steps=steps, restarts=restarts)
    done = folder.done()
    todo = [(n, cell, genome, index) for n, (cell, genome, index) in enumerate(sources, 1)
            if cell not in done]
    cores = torch.get_num_threads() if device.type == "cpu" else None
    workers = min(resolve_workers(cfg.workers, str(device), cores), len(todo))
    with contextlib.ExitStack() as stack:
        if workers > 1:  # each worker loads the run and its targets once; the parent appends in order
            pool = stack.enter_context(WorkerPool(workers, _init_worker, (str(run.run_dir), run.doc, run.eps,
                                                                          picks), device=str(device)))
            items = [(genome, index, seed, steps, restarts) for _, _, genome, index in todo]
            scored = pool.map(_source_task, items, lambda it: f"transfer source {it[0]}")
        else:
            scored = (_score_source(run, targets, genome, index, seed, attack, device)
                      for _, _, genome, index in todo)
        for (n, cell, genome, index), (clean, robust, seconds) in zip(todo, scored):
            log.info("transfer %d/%d: PGD-%d x%d crafted on %s (%s)", n, len(sources), steps, restarts,
                     "the largest path" if index is None else f"front member #{index}", genome)
            total = len(run.data.test)
            done[cell] = folder.append(
                cell,
                {
                    "source": genome,
                    "source_index": index,
                    "source_params": front[index]["params"] if index is not None else _params(run, genome),
                    "clean_acc": [100.0 * c / total for c in clean],
                    "robust_acc": [100.0 * r / total for r in robust],
                    "images": total,
                    "seconds": seconds,
                },
            )
    return _finish(
        folder, run, picks, sources, [done[c] for c, _, _ in sources], steps, restarts, cfg.masking_margin
    )


def _score_source(run, targets: dict[int, Any], genome: str, index: int | None, seed: int, attack, device):
    """(clean counts, robust counts, seconds) of PGD crafted on one source (the largest path, or the
    member ``index``, itself a target), scored on every target (``targets``: member index -> model, in
    the picks' order)."""
    import torch

    from ..search.evaluator import genome_seed

    t0 = time.perf_counter()
    model = targets[index] if index is not None else run.subnet(genome).to(device)
    gen = torch.Generator(device=device).manual_seed(genome_seed(seed + 1, genome))
    clean, robust = _craft_and_score(model, list(targets.values()), run.data.test, attack, gen, device)
    return clean, robust, time.perf_counter() - t0


def _init_worker(device: str, run_dir: str, doc: dict[str, Any], eps: float, picks: list[int]):
    import torch

    run = open_run(Path(run_dir), doc, eps)
    dev = torch.device(device)
    return run, {i: run.subnet(run.front[i]["genome"]).to(dev) for i in picks}, dev


def _source_task(item) -> tuple[list[int], list[int], float]:
    from ..attacks import PGD

    genome, index, seed, steps, restarts = item
    run, targets, device = worker_state()
    return _score_source(run, targets, genome, index, seed, PGD(eps=run.eps, steps=steps, restarts=restarts),
                         device)


def _params(run, genome: str) -> int:
    from ..search.objectives import genome_costs

    return int(genome_costs(run.loaded.space, run.loaded.space.parse(genome), run.loaded.dataset)["params"])


def analyse(matrix: np.ndarray, picks: list[int], knee: int, margin: float) -> dict[str, Any]:
    """Per target: white-box accuracy, the strongest transfer (lowest accuracy) and its source row,
    and whether transfer beats white-box by more than ``margin`` points (gradient masking flag).

    ``matrix`` is (1 + K) x K: row 0 the largest path, row 1 + j member ``picks[j]``."""
    out = []
    for j, index in enumerate(picks):
        white = float(matrix[1 + j, j])
        others = [(float(matrix[r, j]), r) for r in range(matrix.shape[0]) if r != 1 + j]
        strongest, row = min(others)
        out.append(
            {
                "target": index,
                "white_box": white,
                "largest_transfer": float(matrix[0, j]),
                "strongest_transfer": strongest,
                "strongest_row": row,
                "gap": white - strongest,
                "flag": white - strongest > margin,
            }
        )
    by_target = {o["target"]: o for o in out}
    return {"targets": out, "knee": by_target.get(knee)}


def _finish(folder, run, picks, sources, cells, steps, restarts, margin) -> Path:
    front, knee = run.front, run.knee
    matrix = np.array([c["robust_acc"] for c in cells], dtype=float)
    clean = np.array(cells[0]["clean_acc"], dtype=float)
    row_labels = [f"largest path ({cells[0]['source_params']:,} p)"] + [
        member_label(i, front[i], knee) for i in picks
    ]
    col_labels = [member_label(i, front[i], knee) for i in picks]
    res = analyse(matrix, picks, knee, margin)
    _write_csv(folder.path / "transfer_matrix.csv", sources, cells, picks, front, clean, matrix)
    plot_heatmap(
        folder.path / "transfer_heatmap.png",
        matrix,
        row_labels,
        col_labels,
        f"PGD-{steps} x{restarts}, eps {run.eps:g}: robust accuracy % of targets (columns) on images "
        f"crafted on sources (rows)",
    )
    findings = _findings(res, row_labels, margin)
    columns = ["source \\ target"] + col_labels
    rows = [[label, *[float(v) for v in matrix[r]]] for r, label in enumerate(row_labels)]
    rows.append(["(clean accuracy)", *[float(v) for v in clean]])
    title = (
        f"Robust accuracy (%) of {len(picks)} front members (columns) on PGD-{steps} x{restarts} examples "
        f"crafted white-box on each source (rows), eps {run.eps:g}, {cells[0]['images']} test images, "
        f"inherited weights; the diagonal of the member rows is white-box (* knee)."
    )
    folder.finish(
        title,
        {"columns": columns, "rows": rows},
        ["transfer_heatmap.png"],
        findings,
        {
            "matrix": matrix.tolist(),
            "clean_acc": clean.tolist(),
            "sources": [g for _, g, _ in sources],
            "targets": [front[i]["genome"] for i in picks],
            "members": picks,
            "knee": knee,
            "analysis": res,
            "csv": "transfer_matrix.csv",
            "gradient_masking_suspected": bool(res["knee"] and res["knee"]["flag"]),
        },
    )
    return folder.path


def _findings(res: dict[str, Any], row_labels: list[str], margin: float) -> list[str]:
    out = []
    k = res["knee"]
    if k is not None:
        src = row_labels[k["strongest_row"]]
        if k["flag"]:
            out.append(
                f"Gradient masking suspected for the knee: transfer from {src} leaves "
                f"{k['strongest_transfer']:.1f} % robust, {k['gap']:.1f} points below its white-box "
                f"{k['white_box']:.1f} % (margin {margin:g}): confirm with nasctl eval (more restarts, "
                f"AutoAttack) before trusting its robustness."
            )
        else:
            out.append(
                f"No sign of gradient masking for the knee: white-box PGD leaves {k['white_box']:.1f} %, "
                f"the strongest transfer (from {src}) {k['strongest_transfer']:.1f} %, and the largest "
                f"path's {k['largest_transfer']:.1f} % (transfer is expected to be weaker than white-box)."
            )
    flagged = [t for t in res["targets"] if t["flag"] and (k is None or t["target"] != k["target"])]
    for t in flagged:
        out.append(
            f"Member #{t['target']}: transfer from {row_labels[t['strongest_row']]} is "
            f"{t['gap']:.1f} points stronger than white-box ({t['strongest_transfer']:.1f} vs "
            f"{t['white_box']:.1f} %): suspected gradient masking."
        )
    gaps = [t["largest_transfer"] - t["white_box"] for t in res["targets"]]
    out.append(
        f"Examples crafted on the largest path leave the members {np.mean(gaps):+.1f} points "
        f"(mean) of robust accuracy compared with white-box attacks on themselves."
    )
    return out


def _write_csv(path: Path, sources, cells, picks, front, clean, matrix) -> None:
    rows = [["source", "source_index", "source_params", *[f"target:{i}:{front[i]['params']}" for i in picks]]]
    for (_, genome, index), c, row in zip(sources, cells, matrix):
        rows.append([genome, "" if index is None else index, c["source_params"], *[f"{v:.2f}" for v in row]])
    rows.append(["clean", "", "", *[f"{v:.2f}" for v in clean]])
    atomic_write_text(path, csv_text(rows))


def plot_heatmap(path: Path, matrix: np.ndarray, rows: list[str], cols: list[str], title: str) -> None:
    """The matrix as a heat map, values written in, white-box cells (member row == column) framed."""
    from matplotlib.patches import Rectangle

    from ..render.outputs import _figure, _save

    fig = _figure(figsize=(2.2 + 1.3 * len(cols), 1.6 + 0.55 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target (evaluated)")
    ax.set_ylabel("source (PGD crafted on)")
    for (i, j), v in np.ndenumerate(matrix):
        wb = i == j + 1
        ax.text(
            j,
            i,
            f"{v:.1f}" + ("\nwhite-box" if wb else ""),
            ha="center",
            va="center",
            color="w" if v < 60 else "k",
            fontsize=7,
            fontweight="bold" if wb else "normal",
        )
        if wb:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(im, ax=ax, label="robust accuracy %")
    ax.set_title(title, fontsize=8, wrap=True)
    _save(fig, path)
