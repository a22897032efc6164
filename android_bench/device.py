"""Which phones are attached, and who each one is: a :class:`DeviceInfo` from ``getprop``.

The fingerprint (``DeviceInfo.fingerprint``) hashes model, SoC/board, primary ABI, Android version
and core count, so two phones of the same model and OS share lookup tables and measurements, and
an OS update starts a new scope. The serial is only the name.

Properties read (one ``adb shell getprop`` call): ``ro.product.model``, ``ro.board.platform``
(falling back to ``ro.hardware``), ``ro.product.cpu.abi`` and ``ro.product.cpu.abilist``,
``ro.build.version.release`` and ``.sdk``, ``ro.product.manufacturer``. Core count: the CPUs in
``/sys/devices/system/cpu/possible`` (``0-7`` -> 8), else ``nproc``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from nasctl.profiling.device import DeviceInfo

from .adb import Adb, AdbError, no_device_error, several_devices_error, state_error

READY = "device"  # adb's word for a phone that takes commands
_PROP = re.compile(r"^\[(?P<key>[^\]]+)\]:\s*\[(?P<value>.*)\]\s*$")


@dataclass(frozen=True)
class AttachedDevice:
    """A phone as ``nasctl devices`` shows it: its adb state and, when ready, its fingerprint."""

    serial: str
    state: str
    attrs: dict[str, str] = field(default_factory=dict)  # from adb devices -l (model, transport_id, ...)
    info: DeviceInfo | None = None
    props: dict[str, str] = field(default_factory=dict)  # abilist, sdk, manufacturer (not fingerprinted)
    error: str | None = None  # why info is missing

    @property
    def ready(self) -> bool:
        return self.state == READY

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "state": self.state,
            "attrs": dict(self.attrs),
            "info": self.info.to_dict() if self.info else None,
            "fingerprint": self.info.fingerprint if self.info else None,
            "props": dict(self.props),
            "error": self.error,
        }


def parse_getprop(text: str) -> dict[str, str]:
    """``[key]: [value]`` lines (``adb shell getprop``) -> dict."""
    out = {}
    for line in text.replace("\r", "").splitlines():
        m = _PROP.match(line.strip())
        if m:
            out[m["key"]] = m["value"]
    return out


def count_cpus(possible: str) -> int:
    """CPUs in a kernel CPU list such as ``0-7`` or ``0-3,6,8-9``; 0 when unreadable."""
    n = 0
    for part in possible.strip().split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            lo, hi = (int(x) for x in part.split("-"))
            n += max(0, hi - lo + 1)
        elif part.isdigit():
            n += 1
    return n


def device_info(adb: Adb, serial: str) -> tuple[DeviceInfo, dict[str, str]]:
    """The phone's :class:`DeviceInfo` (name = serial) and the extra properties worth recording."""
    props = parse_getprop(adb.shell(serial, "getprop").stdout)
    if not props.get("ro.product.cpu.abi"):
        raise AdbError(
            f"phone {serial!r} answered getprop without ro.product.cpu.abi: is it an Android device? "
            f"(nasctl bench needs one with adb shell)"
        )
    possible = adb.shell(serial, "cat /sys/devices/system/cpu/possible", check=False).stdout
    cores = count_cpus(possible)
    if cores == 0:
        nproc = adb.shell(serial, "nproc", check=False).stdout.strip()
        cores = int(nproc) if nproc.isdigit() else 0
    release = props.get("ro.build.version.release", "?")
    sdk = props.get("ro.build.version.sdk", "")
    info = DeviceInfo(
        name=serial,
        model=props.get("ro.product.model", "unknown"),
        board=props.get("ro.board.platform") or props.get("ro.hardware", ""),
        abi=props["ro.product.cpu.abi"],
        os=f"Android {release}" + (f" (SDK {sdk})" if sdk else ""),
        cores=cores,
    )
    extra = {
        "manufacturer": props.get("ro.product.manufacturer", ""),
        "abilist": props.get("ro.product.cpu.abilist", "") or info.abi,
        "hardware": props.get("ro.hardware", ""),
        "build_fingerprint": props.get("ro.build.fingerprint", ""),
    }
    return info, extra


def list_devices(adb: Adb, with_info: bool = True) -> list[AttachedDevice]:
    """Every phone adb lists; ready ones with their :class:`DeviceInfo` (a phone that fails to answer
    keeps its state and gets ``error``, so one bad phone does not hide the others)."""
    out = []
    for d in adb.devices():
        if not with_info or d.state != READY:
            error = None if d.state == READY else str(state_error(d.serial, d.state))
            out.append(AttachedDevice(d.serial, d.state, d.attrs, error=error))
            continue
        try:
            info, props = device_info(adb, d.serial)
        except AdbError as e:
            out.append(AttachedDevice(d.serial, d.state, d.attrs, error=str(e)))
            continue
        out.append(AttachedDevice(d.serial, d.state, d.attrs, info, props))
    return out


def choose_devices(adb: Adb, serials: list[str] | None = None, all_devices: bool = False) -> list[str]:
    """The serials to benchmark: ``serials`` (each must be listed and ready), every listed phone with
    ``all_devices`` (not-ready ones included: they fail with their reason, the others go on), or the
    only phone. Raises the one-line error when none can be chosen."""
    listed = adb.devices()
    states = {d.serial: d.state for d in listed}
    if serials:
        chosen = list(dict.fromkeys(serials))
        for s in chosen:
            if s not in states:
                raise state_error(s, "missing", adb)
        if len(chosen) == 1 and states[chosen[0]] != READY:
            raise state_error(chosen[0], states[chosen[0]])
        return chosen
    if not listed:
        raise no_device_error()
    if all_devices:
        return [d.serial for d in listed]
    if len(listed) > 1:
        raise several_devices_error(adb)
    only = listed[0]
    if only.state != READY:
        raise state_error(only.serial, only.state)
    return [only.serial]
