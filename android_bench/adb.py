"""The one adb wrapper: every call is ``subprocess.run([adb, "-s", serial, ...], timeout=...)``.

Nothing else in nasctl starts adb. Each failure becomes a :class:`~nasctl.profiling.errors.ProfilingError`
of one line that names the phone, what went wrong and the fix: adb not installed, no phone, several
phones and none chosen, a phone that is ``unauthorized`` or ``offline``, one that disappeared
(``device '...' not found``), a call that timed out. adb's exit codes are not trusted on their own
(``adb connect`` to a dead port exits 0): the messages are matched, and a failure adb does not
explain is followed by ``adb get-state`` to tell a lost phone from a failed command.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from nasctl.profiling.errors import ProfilingError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0  # a push of a few MB or a getprop; benchmark runs pass their own
PROBE_TIMEOUT_S = 10.0  # get-state after an unexplained failure
INSTALL_HINT = (
    "install the Android SDK platform-tools (https://developer.android.com/tools/releases/platform-tools)"
    " or `sudo apt install adb` (nasctl devices, bench and profile also take --adb PATH)"
)
SETUP_HINT = "see docs/android.md"


class AdbError(ProfilingError):
    """adb or the phone failed; the message is one line with the fix."""


class AdbTimeout(AdbError):
    """An adb call did not finish within ``seconds``. The message names no flag: which one sets the
    limit (if any) depends on the command and the call, so the caller that knows adds it."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True)
class ListedDevice:
    """One line of ``adb devices -l``: serial, state (device, unauthorized, offline, no permissions, ...)
    and the ``key:value`` attributes adb adds (product, model, device, transport_id, usb)."""

    serial: str
    state: str
    attrs: dict[str, str] = field(default_factory=dict)


def find_adb(path: str | os.PathLike | None = None) -> str:
    """The adb executable: ``path`` (``--adb``) if given, else the first ``adb`` on ``PATH``."""
    if path:
        p = str(path)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
        found = shutil.which(p)
        if found:
            return found
        raise AdbError(
            f"adb not found at {p!r} (--adb): pass the path of an adb executable, or {INSTALL_HINT}"
        )
    found = shutil.which("adb")
    if not found:
        raise AdbError(f"adb is not installed (no 'adb' on PATH): {INSTALL_HINT}")
    return found


class Adb:
    """adb at one path; methods take the phone's serial. Stateless, so threads may share it."""

    def __init__(self, path: str | os.PathLike | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.path = find_adb(path)
        self.timeout_s = float(timeout_s)

    # --- the one place that runs adb ---------------------------------------------------------
    def run(
        self,
        args: Sequence[str],
        serial: str | None = None,
        timeout_s: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """``adb [-s serial] args``; stdout/stderr as text. With ``check``, a failure raises
        :class:`AdbError` (the phone's state, or the command's own error)."""
        cmd = [self.path, *(["-s", serial] if serial else []), *args]
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        log.debug("adb: %s", " ".join(cmd[1:]))
        try:
            proc = subprocess.run(
                cmd,
                timeout=timeout,
                capture_output=True,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            who = f"phone {serial!r}" if serial else "the adb server"
            raise AdbTimeout(
                f"adb {_short(args)} on {who} did not answer within {timeout:g} s: the phone may be "
                f"asleep, hung or disconnected; unlock it, reconnect it (or run adb reconnect), and run "
                f"again",
                timeout,
            ) from e
        except FileNotFoundError as e:
            raise AdbError(f"adb disappeared from {self.path!r}: {INSTALL_HINT}") from e
        except PermissionError as e:
            raise AdbError(f"adb at {self.path!r} cannot be run (permission denied): {INSTALL_HINT}") from e
        if check and proc.returncode != 0:
            raise self._failure(args, serial, proc)
        return proc

    def _failure(
        self, args: Sequence[str], serial: str | None, proc: subprocess.CompletedProcess
    ) -> AdbError:
        text = f"{proc.stderr}\n{proc.stdout}"
        known = classify(text, serial, self)
        if known is not None:
            return known
        if serial and args and args[0] in ("shell", "push", "pull"):
            state = self.state(serial)  # a lost phone explains most unexplained failures
            if state != "device":
                return state_error(serial, state, self)
        last = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        where = f" on phone {serial!r}" if serial else ""
        return AdbError(f"adb {_short(args)}{where} failed (exit {proc.returncode}): {last[0][:240]}")

    # --- what nasctl asks of adb -------------------------------------------------------------
    def devices(self) -> list[ListedDevice]:
        """Every phone adb sees, in any state (``adb devices -l``)."""
        proc = self.run(["devices", "-l"])
        return parse_devices(proc.stdout)

    def state(self, serial: str) -> str:
        """``device``, ``unauthorized``, ``offline``, ... or ``missing`` when adb does not list it."""
        try:
            listed = {d.serial: d.state for d in self.devices()}
        except AdbError:
            return "missing"
        return listed.get(serial, "missing")

    def shell(
        self, serial: str, command: str, timeout_s: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """``adb -s serial shell command`` (one string, run by the phone's sh)."""
        return self.run(["shell", command], serial, timeout_s, check)

    def push(
        self, serial: str, local: str | os.PathLike, remote: str, timeout_s: float | None = None
    ) -> None:
        """``adb -s serial push local remote`` (adb creates the remote folders)."""
        self.run(["push", str(local), remote], serial, timeout_s)


def parse_devices(text: str) -> list[ListedDevice]:
    """Parse ``adb devices [-l]`` output (daemon start-up chatter and the header are skipped)."""
    out = []
    for line in text.replace("\r", "").splitlines():
        line = line.strip()
        if not line or line.startswith(("*", "List of devices")) or line.startswith("adb "):
            continue
        parts = line.split(None, 1)
        serial, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        tokens = rest.split()
        attrs: dict[str, str] = {}
        while tokens and re.fullmatch(r"[a-z_]+:\S*", tokens[-1]):
            key, _, value = tokens.pop().partition(":")
            attrs[key] = value
        out.append(ListedDevice(serial, " ".join(tokens) or "unknown", dict(reversed(list(attrs.items())))))
    return out


# --- error messages ---------------------------------------------------------------------------
def state_error(serial: str, state: str, adb: Adb | None = None) -> AdbError:
    """The one-line error for a phone that is not ready (``state`` from ``adb devices``)."""
    if state == "unauthorized":
        return AdbError(
            f"phone {serial!r} is unauthorized: unlock it and accept the 'Allow USB debugging?' prompt "
            f"(tick 'Always allow from this computer'), then run again; no prompt? revoke USB debugging "
            f"authorizations in Developer options and reconnect"
        )
    if state == "offline":
        return AdbError(
            f"phone {serial!r} is offline: unlock it, reconnect the cable (or run adb reconnect; for Wi-Fi "
            f"debugging adb connect HOST:PORT again), then run again"
        )
    if state.startswith("no permissions"):
        return AdbError(
            f"adb has no permission to open phone {serial!r} over USB: install udev rules for Android "
            f"(Debian: apt install android-sdk-platform-tools-common) and replug it, or run adb as root"
        )
    if state == "missing":
        return AdbError(
            f"device {serial!r} not found: it was disconnected or its serial is wrong; connected: "
            f"{_listing(adb)}; reconnect it and run again (nasctl devices lists the phones)"
        )
    return AdbError(
        f"phone {serial!r} is in state {state!r}, not ready for commands: boot it normally, unlock it and "
        f"run again"
    )


def classify(text: str, serial: str | None, adb: Adb | None = None) -> AdbError | None:
    """Map adb's own error messages to one-line errors with the fix; None when it is not adb's."""
    low = text.lower()
    who = serial or "?"
    if "no devices/emulators found" in low or "no devices found" in low:
        if serial:
            return state_error(serial, "missing", adb)
        return no_device_error()
    if "more than one device" in low:
        return several_devices_error(adb)
    if re.search(r"device '[^']*' not found", low) or "device not found" in low:
        return state_error(who, "missing", adb)
    if "device unauthorized" in low:
        return state_error(who, "unauthorized")
    if "device offline" in low:
        return state_error(who, "offline")
    if "no permissions" in low or "insufficient permissions" in low:
        return state_error(who, "no permissions")
    if "error: closed" in low or "protocol fault" in low or "connection reset" in low:
        return AdbError(
            f"lost the connection to phone {who!r} (adb: {_first_error(text)}): it was unplugged, went "
            f"to sleep or adb restarted; reconnect it and run again"
        )
    return None


def no_device_error() -> AdbError:
    return AdbError(
        "no Android phone is connected (adb devices lists none): plug one in with USB debugging on and "
        f"accept its prompt, or adb connect HOST:PORT; {SETUP_HINT}"
    )


def several_devices_error(adb: Adb | None) -> AdbError:
    return AdbError(
        f"several phones are connected ({_listing(adb)}): choose one with --device SERIAL (repeat it for "
        f"several) or use --all"
    )


def _listing(adb: Adb | None) -> str:
    if adb is None:
        return "unknown"
    try:
        listed = adb.devices()
    except AdbError:
        return "unknown"
    return ", ".join(f"{d.serial} ({d.state})" for d in listed) or "none"


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else "no output")[:200]


def _short(args: Sequence[str]) -> str:
    if not args:
        return ""
    if args[0] == "shell" and len(args) > 1:
        word = args[1].split()[0] if args[1].split() else ""
        return f"shell {os.path.basename(word)}"
    return args[0]
