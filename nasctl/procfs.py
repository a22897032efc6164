"""One reader of Linux ``/proc`` ``Key:  value kB`` lines. Imports nothing, so the measuring worker
(:mod:`nasctl.profiling.worker`, whose own memory it reports) can use it without loading more than it
measures, and the ground layer's memory checks (:func:`nasctl.core.mem_available_bytes`) read the same way."""

from __future__ import annotations


def proc_kib_field(path: str, key: str) -> int | None:
    """The value of the ``key:`` line in ``path`` (e.g. ``/proc/meminfo``, ``MemAvailable``), in bytes;
    None where the file or the line is missing (not Linux) or does not parse."""
    prefix = key + ":"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
