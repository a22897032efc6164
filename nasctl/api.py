"""nasctl from Python: search, open a finished run, take a member as an ``nn.Module``, export it.

The CLI and this module call the same library functions (:func:`nasctl.nas.runs.search.search`,
:func:`nasctl.export.export`); this is the short way a notebook user takes::

    import nasctl
    run = nasctl.search(dataset="digits", epochs=60, generations=10)
    model = run.knee.model()                 # the network nasctl export would ship
    result = nasctl.export(run.knee, int8=True)

Settings are :class:`nasctl.nas.search.SearchConfig`'s fields, passed by name; a bad one is one
:class:`NasctlError` naming the argument (not the CLI flag). Progress goes to ``progress`` (one
:class:`Progress` per supernet epoch and per search generation), so a notebook sees the long stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import speaks_arguments

if TYPE_CHECKING:
    import torch

    from .export import ExportResult
    from .nas.data import DataSplits

__all__ = ["Member", "Progress", "SearchRun", "export", "open_run", "search"]


@dataclass(frozen=True)
class Progress:
    """One step of a long stage: ``stage`` is ``supernet`` (``step`` = epoch) or ``search`` (``step`` =
    generation), ``total`` the stage's count, ``info`` the step's numbers (loss and accuracies of an
    epoch; evaluations, hypervolume and best objective values of a generation)."""

    stage: str
    step: int
    total: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Member:
    """One member of a run's Pareto front, as ``pareto.json`` records it."""

    run: SearchRun = field(repr=False)
    index: int  # position in the front
    entry: dict[str, Any] = field(repr=False)  # the front entry, every field the search wrote

    @property
    def genome(self) -> str:
        return str(self.entry["genome"])

    @property
    def params(self) -> int:
        return int(self.entry["params"])

    @property
    def is_knee(self) -> bool:
        return self.index == self.run.doc.get("knee")

    # test split, inherited weights with BN recalibrated (the final attack: PGD-20 x 3 by default)
    @property
    def clean_acc(self) -> float | None:
        return self.entry.get("final_clean_acc")

    @property
    def adv_acc(self) -> float | None:
        return self.entry.get("final_adv_acc")

    # validation split, what the search ranked by
    @property
    def val_clean_acc(self) -> float:
        return float(self.entry["clean_acc"])

    @property
    def val_adv_acc(self) -> float:
        return float(self.entry["adv_acc"])

    # the member trained on its own by the fine-tune stage (None: not fine-tuned)
    @property
    def finetuned_clean_acc(self) -> float | None:
        return self.entry.get("finetuned_clean_acc")

    @property
    def finetuned_adv_acc(self) -> float | None:
        return self.entry.get("finetuned_adv_acc")

    @property
    def finetuned_aa_acc(self) -> float | None:
        return self.entry.get("finetuned_aa_acc")

    @property
    def finetuned(self) -> bool:
        return bool(self.entry.get("finetuned_checkpoint"))

    def model(self) -> torch.nn.Module:
        """The ``nn.Module`` ``nasctl export`` would ship for this member, in eval mode on the CPU: the
        fine-tuned weights when the fine-tune stage trained it, else the supernet's inherited weights
        with BatchNorm recalibrated exactly as the search scored them."""
        if self.finetuned:
            from .nas.supernet.subnet_ckpt import load_subnet

            return load_subnet(self.run.run_dir / self.entry["finetuned_checkpoint"]).model.eval()
        return self.run._study().subnet(self.genome).eval()


@dataclass
class SearchRun:
    """A finished search run: its folder, ``pareto.json`` and the front as :class:`Member` objects."""

    run_dir: Path
    doc: dict[str, Any] = field(repr=False)  # pareto.json
    front: list[Member] = field(default_factory=list, repr=False)
    _loaded: Any = field(default=None, repr=False)

    @property
    def knee(self) -> Member | None:
        knee = self.doc.get("knee")
        return self.front[knee] if isinstance(knee, int) and 0 <= knee < len(self.front) else None

    @property
    def config(self) -> dict[str, Any]:
        """The settings the run was made with (``config.json``'s ``config``)."""
        import json

        return json.loads((self.run_dir / "config.json").read_text()).get("config", {})

    @property
    def summary(self) -> Path:
        return self.run_dir / "summary.md"

    def _study(self):
        """The run's supernet, images and BN calibration, loaded once (for inherited-weight members)."""
        if self._loaded is None:
            from .nas.experiments.run_data import open_run as open_study

            self._loaded = open_study(self.run_dir, self.doc)
        return self._loaded


def open_run(path: str | Path) -> SearchRun:
    """The finished search run in ``path`` (its folder or its ``pareto.json``); one
    :class:`NasctlError` for a folder that is missing or unfinished."""
    from .nas.runs.select import read_front

    run_dir, doc = read_front(path, instead=None)
    run = SearchRun(Path(run_dir), doc)
    run.front = [Member(run, i, e) for i, e in enumerate(doc["front"])]
    return run


def search(dataset: str = "digits", *, progress: Callable[[Progress], None] | None = None,
           data: DataSplits | None = None, **settings: Any) -> SearchRun:
    """Run ``nasctl search`` from Python and return the finished run.

    ``settings`` are :class:`~nasctl.nas.search.SearchConfig`'s fields (``epochs``, ``generations``,
    ``pop_size``, ``run_root``, ``finetune_members``, ...; a supernet's training settings go in
    ``train={...}``); ``data`` takes ready :class:`~nasctl.nas.data.DataSplits` instead of loading
    ``dataset``. Without a ``supernet`` it trains one first, as the CLI does."""
    from .config import build_config
    from .nas.runs.search import search as run_search
    from .nas.search import SearchConfig
    from .profiling.source import LatencySources

    search_cb, train_cb = _callbacks(progress)
    with speaks_arguments(SearchConfig):
        cfg = build_config(SearchConfig, {"dataset": dataset, **settings}, "nasctl.search()")
        path = run_search(cfg, search_cb, train_cb, data=data, latency=LatencySources())
    return open_run(path.parent)


def export(member: Member, target: str = "tflite", int8: bool = True, out: str | Path | None = None,
           **settings: Any) -> ExportResult:
    """Export ``member`` (its fine-tuned weights when trained) to ``target`` with every check of
    ``nasctl export``; returns the :class:`~nasctl.export.ExportResult` (``out_dir``, ``ok``, the
    report). ``settings`` are :class:`~nasctl.export.ExportConfig`'s other fields. The same call as
    ``nasctl.export(member)`` (:func:`nasctl.export.member.export_member`)."""
    from .export.member import export_member

    return export_member(member, target, int8, out, **settings)


def _callbacks(progress: Callable[[Progress], None] | None):
    """The search's and the supernet trainer's callbacks, each step reported to ``progress``."""
    from .nas.search import SearchCallbacks
    from .nas.training.supernet import TrainCallbacks

    if progress is None:
        return None, None

    class _Search(SearchCallbacks):
        def on_generation(self, stats, total):
            progress(Progress("search", stats.generation, total,
                              {"evaluations": stats.evaluations, "hypervolume": stats.hypervolume,
                               "best": dict(stats.best), "seconds": stats.seconds}))

    class _Train(TrainCallbacks):
        epochs = 0

        def on_epoch_start(self, epoch, epochs, n_batches):
            self.epochs = epochs

        def on_epoch_end(self, m):
            progress(Progress("supernet", m.epoch, self.epochs,
                              {"loss": m.loss, "train_clean_acc": m.train_clean_acc,
                               "train_adv_acc": m.train_adv_acc, "val": dict(m.val), "seconds": m.seconds}))

    return _Search(), _Train()
