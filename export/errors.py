"""Errors of the export chain, each one line that names the problem and the fix.

:class:`ConversionError` is raised when a converter (onnx2tf, the TFLite converter) fails: its
message carries the converter's own reason and the failing operation, and points to the log file
that holds the converter's full output, so the terminal never shows a 500-line dump.
"""

from __future__ import annotations

from nasctl.errors import NasctlError


class ExportError(NasctlError):
    """Bad export input (target, run, genome, missing extra) or a failed export step."""


class ConversionError(ExportError):
    """A converter failed; ``op`` names the failing operation where the converter said which."""

    def __init__(self, message: str, op: str | None = None, log_path: str | None = None):
        super().__init__(message)
        self.op = op
        self.log_path = log_path
