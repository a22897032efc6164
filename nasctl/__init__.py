"""nasctl: tiny robust networks, searched and shipped to phones.

The Python API (:mod:`nasctl.api`), three lines from data to an exported model::

    import nasctl
    run = nasctl.search(dataset="digits")      # a SearchRun: .front, .knee, .run_dir
    nasctl.export(run.knee, int8=True)         # an ExportResult: .out_dir, .ok, .report

``nasctl.open_run(path)`` opens a finished run; ``member.model()`` is the ``nn.Module`` that would be
exported. The names load on first use, so ``nasctl --help`` starts without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the same names load on first use
    from . import export
    from .api import Member, Progress, SearchRun, open_run, search

__all__ = ["Member", "Progress", "SearchRun", "__version__", "export", "open_run", "search"]

_API = ("Member", "Progress", "SearchRun", "open_run", "search")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "export":  # the subpackage, which is also callable: nasctl.export(member, int8=True)
        import importlib

        return importlib.import_module(".export", __name__)
    raise AttributeError(f"module 'nasctl' has no attribute {name!r}")
