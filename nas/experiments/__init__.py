"""TAM-NAS's own studies as experiments (``nasctl experiment STUDY``), one module each.

- :mod:`.transfer` -- (a) do adversarial examples transfer between subnets? Gradient-masking check.
- :mod:`.width` -- (b) how the supernet's width multiplier changes the front.
- :mod:`.finetune_scratch` -- (c) inherited vs fine-tuned vs trained-from-scratch weights.

Every study writes an experiment run folder (:mod:`.folder`): ``config.json`` first, one line per
finished cell in ``results.jsonl``, resumable with ``--resume``, and ``result.json`` (a table, plots
and findings in one shape) that ``nasctl report`` renders. A new study is a module with a config
dataclass and a ``run(cfg, resume=None) -> Path`` function, plus one line in :data:`STUDIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Study:
    name: str
    module: str  # submodule of this package
    config: str  # its config dataclass
    run: str  # its run(cfg, resume=None) -> Path function
    help: str

    def resolve(self):
        """(config class, run function), imported on use (torch comes with them)."""
        mod = importlib.import_module(f".{self.module}", __name__)
        return getattr(mod, self.config), getattr(mod, self.run)


STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        Study(
            "transfer",
            "transfer",
            "TransferConfig",
            "run_transfer",
            "adversarial transferability between the supernet's largest path and front members",
        ),
        Study(
            "width",
            "width",
            "WidthConfig",
            "run_width",
            "supernets of several widths trained and searched with one budget; their fronts compared",
        ),
        Study(
            "finetune-vs-scratch",
            "finetune_scratch",
            "FinetuneScratchConfig",
            "run_finetune_scratch",
            "front members with inherited, fine-tuned and from-scratch weights",
        ),
    )
}


def resume_experiment(path: str | Path) -> Path:
    """Finish an interrupted experiment folder with its recorded config (finished cells are kept)."""
    from nasctl.config import build_config

    from .folder import reopen

    folder = reopen(path)
    if folder.study not in STUDIES:
        from nasctl.errors import NasctlError

        raise NasctlError(f"experiment {str(path)!r} is of an unknown study {folder.study!r}")
    cls, run = STUDIES[folder.study].resolve()
    cfg = build_config(cls, dict(folder.config.get("config") or {}), f"{str(Path(path) / 'config.json')!r}")
    return run(cfg, resume=path)
