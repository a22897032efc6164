"""What a study needs from a finished search run: its front, supernet, images and threat model.

Every study scores networks exactly as the search scored its front: the supernet's own splits
(``supernet_data``), the test images the front was evaluated on (the first ``final_images``), the
run's eps and its BatchNorm calibration. So a study's number for a front member with inherited
weights and the run's final attack is the number in ``pareto.json``, and the two can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasctl.errors import NasctlError

if TYPE_CHECKING:
    from .folder import ExperimentFolder


@dataclass
class SearchRun:
    run_dir: Path
    doc: dict[str, Any]  # pareto.json
    loaded: Any  # checkpoint.LoadedSupernet
    data: Any  # data.DataSplits, test cut to the images the front was scored on
    eps: float
    calibration: Any  # supernet.BNCalibration the search used

    @property
    def front(self) -> list[dict[str, Any]]:
        return self.doc["front"]

    @property
    def knee(self) -> int:
        return int(self.doc["knee"])

    @property
    def seed(self) -> int:
        return int(self.doc.get("seed") or 0)

    @property
    def final_attack(self) -> dict[str, Any]:
        return self.doc.get("final_attack") or {}

    def subnet(self, genome: str):
        """The subnet with inherited weights and BN recalibrated as the search did: eval mode, CPU."""
        from ..supernet import prepare_subnet

        model = self.loaded.supernet.extract(self.loaded.space.parse(genome))
        return prepare_subnet(model, self.data.train, self.calibration)


def read_run(run: str | None, run_root: str) -> tuple[Path, dict[str, Any]]:
    """(folder, pareto.json) of ``run`` (the newest search under ``run_root`` when None): one line
    for a folder that is missing, unfinished or has an empty front."""
    from ..runs.select import latest_run, read_front

    # instead=None: the studies take no --checkpoint, so no message may suggest one
    return read_front(run or latest_run(run_root, instead=None), instead=None)


def study_run(
    run: str | None, run_root: str, resume: str | Path | None
) -> tuple[ExperimentFolder | None, Path, dict[str, Any]]:
    """(the reopened experiment folder, or None for a new study; the search run's folder; its pareto.json):
    a resumed study goes on with the run it recorded, a new one reads ``run`` as :func:`read_run` does.
    A new study's folder is started by the caller only once the run has been opened, so a bad run
    leaves none."""
    from .folder import reopen

    folder = None if resume is None else reopen(resume)
    run_dir, doc = read_run(run if folder is None else folder.config["search_runs"][0], run_root)
    return folder, run_dir, doc


def check_members(members: int, run_dir: Path, front: list[dict[str, Any]]) -> None:
    if members < 1:
        raise NasctlError(f"--members must be >= 1, got {members}")
    if members > len(front):
        raise NasctlError(
            f"--members {members} is larger than the front of run {str(run_dir)!r}, which has "
            f"{len(front)} members: choose 1..{len(front)}"
        )


def member_picks(front: list[dict[str, Any]], knee: int, k: int) -> list[int]:
    """``k`` front indices spread over log(parameters), the knee among them (the fine-tune stage's)."""
    from ..runs.finetune import spread_picks

    return spread_picks(front, knee, k)


def open_run(run_dir: Path, doc: dict[str, Any], eps: float | None = None) -> SearchRun:
    """Load the run's supernet (checked against its recorded SHA-256) and its images."""
    from ..data import first_test_images, supernet_data
    from ..runs.select import run_supernet
    from ..supernet import BNCalibration
    from ..supernet.checkpoint import load_supernet

    loaded = load_supernet(run_supernet(run_dir, doc, instead=None))
    data = supernet_data({**loaded.config, "dataset": loaded.dataset["name"]}, doc.get("data_dir"))
    data = first_test_images(data, doc.get("final_images"))
    bn = doc.get("bn_calibration") or {}
    calib = BNCalibration(**{k: int(bn[k]) for k in ("batches", "batch_size", "seed") if k in bn})
    run_eps = float(eps if eps is not None else doc.get("eps") if doc.get("eps") is not None else loaded.eps)
    return SearchRun(run_dir, doc, loaded, data, run_eps, calib)


def member_label(index: int, rec: dict[str, Any], knee: int) -> str:
    return f"#{index}{'*' if index == knee else ''} ({rec['params']:,} p)"
