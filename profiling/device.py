"""Who is measuring: the host's fingerprint (CPU model, core count, architecture, OS).

The store keys every number on this fingerprint, so a table built on one machine is never used to
predict latency on another; the name (``host``) is only for people.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # "host", or a phone's serial
    model: str  # CPU model (host) or phone model
    board: str
    abi: str  # machine architecture / primary ABI
    os: str
    cores: int

    @property
    def fingerprint(self) -> str:
        """A stable 16-hex id of the hardware and OS (the name is left out: it is only a label)."""
        d = asdict(self)
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_device() -> DeviceInfo:
    """This machine, as the host backends see it."""
    return DeviceInfo(
        name="host",
        model=_cpu_model(),
        board="",
        abi=platform.machine(),
        os=platform.system(),
        cores=os.cpu_count() or 1,
    )


def affinity() -> tuple[int, ...]:
    """The CPUs this process may run on (recorded with every host measurement)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))
