"""Export a searched subnet to verified ONNX / TFLite float32 / full-integer int8 artifacts.

``export(ExportConfig(...))`` runs the target's steps (see :data:`TARGETS`), checks every hop
numerically and writes ``metadata.json`` and ``report.json`` beside the model files. Heavy
dependencies (onnx, onnxruntime, onnx2tf, TensorFlow, LiteRT) are imported only inside the steps
that need them; TensorFlow and onnx2tf only in :mod:`nasctl.export.tflite`.
"""

import sys as _sys
import types as _types

from .errors import ConversionError, ExportError
from .pipeline import ExportCallbacks, ExportConfig, ExportResult, StepRecord, export
from .source import ExportSource, latest_run, load_source, pick_from_run
from .targets import TARGETS, Target, get_target, register_target

__all__ = [
    "TARGETS",
    "ConversionError",
    "ExportCallbacks",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ExportSource",
    "StepRecord",
    "Target",
    "export",
    "get_target",
    "latest_run",
    "load_source",
    "pick_from_run",
    "register_target",
]


class _CallableModule(_types.ModuleType):
    """``nasctl.export(member, int8=True)`` (:func:`nasctl.export.member.export_member`, also
    :func:`nasctl.api.export`): once imported, ``nasctl.export``
    names this package, so the package itself takes the Python API's call; ``nasctl.export.export(cfg)``
    stays the config-level function the CLI calls."""

    def __call__(self, member, *args, **kwargs):
        from .member import export_member

        return export_member(member, *args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
