"""Export a searched subnet to verified ONNX / TFLite float32 / full-integer int8 artifacts.

``export(ExportConfig(...))`` runs the target's steps (see :data:`TARGETS`), checks every hop
numerically and writes ``metadata.json`` and ``report.json`` beside the model files. Heavy
dependencies (onnx, onnxruntime, onnx2tf, TensorFlow, LiteRT) are imported only inside the steps
that need them; TensorFlow and onnx2tf only in :mod:`nasctl.export.tflite`.
"""

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
