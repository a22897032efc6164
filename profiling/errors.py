"""Profiling's one error type: bad input or environment, one line that names the problem and the fix."""

from __future__ import annotations

from nasctl.errors import NasctlError


class ProfilingError(NasctlError):
    """A model that cannot be measured, an unknown backend, a store that cannot be used, ..."""
