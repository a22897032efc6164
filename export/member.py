"""``nasctl.export(member)``: a member of a finished search run (``nasctl.open_run(...).knee``, or any
object with ``run.run_dir`` and ``index``) exported with every check of ``nasctl export``.

Lives in the export package, not the Python API above it, so that the package's own ``__call__`` can
take the call without importing a higher layer; :func:`nasctl.api.export` is this function.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nasctl.config import speaks_arguments
from nasctl.errors import NasctlError

from .pipeline import ExportConfig, ExportResult
from .pipeline import export as run_export


def export_member(member: Any, target: str = "tflite", int8: bool = True, out: str | Path | None = None,
                  **settings: Any) -> ExportResult:
    """Export ``member`` (its fine-tuned weights when trained) to ``target`` with every check of
    ``nasctl export``; returns the :class:`~nasctl.export.ExportResult` (``out_dir``, ``ok``, the
    report). ``settings`` are :class:`~nasctl.export.ExportConfig`'s other fields."""
    values = {"run": str(member.run.run_dir), "pick": str(member.index), "target": target, "int8": int8,
              "out": None if out is None else str(out),
              # beside the run: <run_root>/export/<stamp>-<name>, as the CLI's --run-root
              "run_root": str(member.run.run_dir.parent.parent), **settings}
    names = {f.name for f in dataclasses.fields(ExportConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise NasctlError(f"unknown argument {unknown[0]!r} for nasctl.export(); known: "
                          f"{', '.join(sorted(names))}")
    with speaks_arguments(ExportConfig):
        cfg = ExportConfig(**values)
        cfg.validate()
        return run_export(cfg)
