"""A device for the real ``adb`` client: an adbd-compatible TCP server on 127.0.0.1, standard library only.

``adb connect 127.0.0.1:PORT`` reaches it like a phone with Wi-Fi debugging on. It speaks the ADB
transport protocol as adbd does towards a host (checked with Debian's adb 1:29.0.6):

* ``CNXN`` answered without ``AUTH``; the banner names product/model/device and the features
  ``shell_v2,cmd,fixed_push_mkdir``. ``unauthorized=True`` answers ``AUTH`` (a token) instead and
  never connects, like a phone whose "Allow USB debugging?" prompt was not accepted;
* ``OPEN``/``OKAY``/``WRTE``/``CLSE`` streams, every ``WRTE`` acknowledged by an ``OKAY`` before the
  next one is sent, in both directions;
* ``shell,v2:`` (and plain ``shell:``): the command runs on the HOST with ``/bin/sh -c`` and its
  stdout, stderr and exit code come back as shell-protocol packets (stdin is not forwarded);
* ``sync:`` v1: ``STAT``, ``LIST``, ``SEND``/``DATA``/``DONE`` (parent folders are created, the file gets
  the mode sent and the mtime), ``RECV``, ``QUIT``: so ``adb push`` and ``adb pull`` work byte for byte.

The device's file system is a folder: ``ROOT/data/local/tmp`` (:attr:`EmulatedDevice.sandbox`) stands
for ``/data/local/tmp``, ``ROOT/sys`` for ``/sys`` (the CPU list ``possible``, cpu0's
``scaling_governor`` and two thermal zones are written there from the constructor's arguments). In a
shell command every absolute ``/data/...`` and ``/sys/...`` path is rewritten to that folder, and the
folder is written back as ``/`` in the output; sync requests outside ``/data/local/tmp`` fail with
"Permission denied". ``getprop`` (all properties, or one) and ``dumpsys thermalservice`` are small
scripts first on the shell's ``PATH``.

Executables: the host cannot run a pushed Android ELF file, so the emulator plays the kernel's
part for the programs named in ``programs`` (default: ``benchmark_model`` -> ``python
tests/fake_benchmark_model.py``, which times the model for real with LiteRT). A command word that
is a path to a file with such a name runs its stand-in -- when the file, at that moment, exists and
has an execute bit; else it fails as on a phone (``not found``, 127; ``can't execute: Permission
denied``, 126, e.g. a push without ``chmod``). The pushed file stays byte-identical to what was sent.

Failures on demand: ``disconnect_after=N`` unplugs the device when the (N+1)-th command arrives
(commands are shell and sync streams; ``count`` is a regex to count only some, e.g. ``"--graph="``):
its connection is dropped, running commands are killed, and the port refuses new connections.
``hang`` (a regex) makes matching shell commands never answer until the client gives up.

By hand: ``python tests/adbd_emulator.py [--port N]`` serves until Ctrl-C (then ``adb connect``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import secrets
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (
    int.from_bytes(name, "little") for name in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE")
)
VERSION = 0x01000001  # skips checksums, as adbd since Android 9
MAX_PAYLOAD = 256 * 1024
FEATURES = "shell_v2,cmd,fixed_push_mkdir"
SYNC_DATA_MAX = 64 * 1024
SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT = 1, 2, 3
DEVICE_TMP = "/data/local/tmp"
_DEVICE_PATH = re.compile(r"(?<![\w./-])/(?:data|sys)(?:/[^\s'\"`;&|<>()]*)?")

EXEC_CHECK = """f="$1"; shift
[ -f "$f" ] || { echo "/system/bin/sh: $f: not found" >&2; exit 127; }
[ -x "$f" ] || { echo "/system/bin/sh: $f: can't execute: Permission denied" >&2; exit 126; }
"""  # then the stand-in: what the kernel checks before it runs a pushed program
DEFAULT_PROPS = {  # an honest emulator that claims a phone's ABI so nasctl's ELF check has one to match
    "ro.product.model": "adbd emulator",
    "ro.product.name": "nasctl_emulator",
    "ro.product.device": "emulator",
    "ro.product.manufacturer": "nasctl tests",
    "ro.board.platform": "host",
    "ro.hardware": "tests",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "nasctl/emulator/emulator:14/TEST/1:user/test-keys",
}


def packet(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    header = struct.pack("<6I", command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
    return header + data


class EmulatedDevice:
    """One emulated phone at ``127.0.0.1:port`` (:attr:`serial`); :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        root: str | os.PathLike,
        props: Mapping[str, str] | None = None,
        *,
        port: int = 0,
        cpus: str = "0-7",
        governor: str = "schedutil",
        thermal_mc: Sequence[int] = (38500, 41200),
        thermal_status: int = 0,
        programs: Mapping[str, Sequence[str]] | None = None,
        unauthorized: bool = False,
        disconnect_after: int | None = None,
        count: str | None = None,
        hang: str | None = None,
    ):
        self.root = Path(root).resolve()
        self.props = {**DEFAULT_PROPS, **(props or {})}
        stand_in = str(Path(__file__).with_name("fake_benchmark_model.py"))
        self.programs = dict(programs or {"benchmark_model": [sys.executable, stand_in]})
        self.unauthorized, self.disconnect_after, self.hang = unauthorized, disconnect_after, hang
        self.count = re.compile(count) if count else None
        self.commands: list[str] = []  # every service opened, as the client sent it
        self.received: list[tuple[str, int, str]] = []  # pushed files: device path, mode, SHA-256
        self.counted = 0
        self.unplugged = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self.sandbox.mkdir(parents=True, exist_ok=True)
        sysfs = {
            "sys/devices/system/cpu/possible": cpus,
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": governor,
            **{f"sys/class/thermal/thermal_zone{i}/temp": str(t) for i, t in enumerate(thermal_mc)},
        }
        for rel, text in sysfs.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text(text + "\n")
        self.bin = self.root / "emulator-bin"
        self.bin.mkdir(exist_ok=True)
        listing = " ".join(shlex.quote(f"[{k}]: [{v}]") for k, v in self.props.items())
        cases = "\n".join(f"  {shlex.quote(k)}) echo {shlex.quote(v)} ;;" for k, v in self.props.items())
        self._script("getprop", f'[ $# -eq 0 ] && exec printf "%s\\n" {listing}\ncase "$1" in\n{cases}\n'
                                f"  *) echo ;;\nesac\n")
        self._script("dumpsys", f'[ "$1" = thermalservice ] && echo "Thermal Status: {thermal_status}"\n')
        for name, argv in self.programs.items():
            self._script(f"exec-{name}", EXEC_CHECK + f'exec {shlex.join(argv)} "$@"\n')
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=f"adbd-{self.port}", daemon=True)

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sandbox(self) -> Path:
        """The host folder that is the device's ``/data/local/tmp``."""
        return self.root / DEVICE_TMP.lstrip("/")

    def start(self) -> EmulatedDevice:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.unplug()
        self._thread.join(timeout=5)

    def unplug(self) -> None:
        """The cable is pulled: connections drop, commands die, the port refuses connections."""
        self.unplugged.set()
        with self._lock:
            connections = list(self._connections)
        for c in connections:
            c.close()

    def shell_commands(self) -> list[str]:
        return [s.partition(":")[2] for s in self.commands if s.startswith("shell")]

    # --- the device's view of paths ------------------------------------------------------------
    def host_path(self, device_path: str) -> Path | None:
        """``/data/local/tmp/...`` -> the sandbox; None for anything else (or an escape with ..)."""
        p = posixpath.normpath(device_path)
        if p == DEVICE_TMP or p.startswith(DEVICE_TMP + "/"):
            return self.root / p.lstrip("/")
        return None

    def rewrite(self, command: str) -> str:
        """The device command as the host runs it: paths into the root, stand-ins for programs."""

        def one(m: re.Match) -> str:
            host = self.root / m.group(0).lstrip("/")
            if host.name in self.programs:  # the kernel's part: checks the file, then runs the stand-in
                return f"{shlex.quote(str(self.bin / ('exec-' + host.name)))} {shlex.quote(str(host))}"
            return str(host)

        return _DEVICE_PATH.sub(one, command)

    def _script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def _accept(self) -> None:
        while not self.unplugged.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn = Connection(self, sock)
            with self._lock:
                self._connections.append(conn)
            conn.start()
        self._server.close()

    def opened(self, service: str) -> bool:
        """Log a new stream; False when it is the command that unplugs the device."""
        with self._lock:
            self.commands.append(service)
            if self.count is None or self.count.search(service):
                self.counted += 1
            drop = self.disconnect_after is not None and self.counted > self.disconnect_after
        if drop:
            self.unplug()
        return not drop


class Connection(threading.Thread):
    """One transport: the handshake, then messages routed to streams by their local id."""

    def __init__(self, device: EmulatedDevice, sock: socket.socket):
        super().__init__(name="adbd-conn", daemon=True)
        self.device, self.sock = device, sock
        self.max_payload = 4096
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.send_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self.send_lock:
            self.sock.sendall(packet(command, arg0, arg1, data))

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for s in list(self.streams.values()):
            s.close()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("host closed")
            buf += chunk
        return buf

    def run(self) -> None:
        try:
            while not self.closed.is_set():
                command, arg0, arg1, length, _, _ = struct.unpack("<6I", self._read(24))
                self.handle(command, arg0, arg1, self._read(length) if length else b"")
        except OSError:
            pass
        finally:
            self.close()

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == CNXN:
            self.max_payload = min(arg1, MAX_PAYLOAD)
            if self.device.unauthorized:  # a token to sign; the key is never accepted
                self.send(AUTH, 1, 0, secrets.token_bytes(20))
                return
            p = self.device.props
            banner = (
                f"device::ro.product.name={p['ro.product.name']};ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features={FEATURES}"
            )
            self.send(CNXN, VERSION, MAX_PAYLOAD, banner.encode())
        elif command == AUTH and self.device.unauthorized and arg0 == 2:
            self.send(AUTH, 1, 0, secrets.token_bytes(20))  # signature refused; then the host sends its key
        elif command == OPEN:
            self.open(arg0, data.rstrip(b"\0").decode(errors="replace"))
        elif command in (OKAY, WRTE, CLSE) and (stream := self.streams.get(arg1)) is not None:
            if command == OKAY:
                stream.acked.set()
            elif command == WRTE:
                self.send(OKAY, stream.local_id, stream.remote_id)
                stream.feed(data)
            else:
                stream.close()

    def open(self, remote_id: int, service: str) -> None:
        kind = service.partition(":")[0].split(",")[0]
        if kind not in ("shell", "sync") or not self.device.opened(service):
            if not self.closed.is_set():
                self.send(CLSE, 0, remote_id)  # refused (or the device was just unplugged)
            return
        local_id, self.next_id = self.next_id, self.next_id + 1
        stream = (ShellStream if kind == "shell" else SyncStream)(self, local_id, remote_id, service)
        self.streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        threading.Thread(target=stream.serve, name=f"adbd-{kind}", daemon=True).start()


class Stream:
    """One service: bytes in (:meth:`read`), bytes out as acknowledged ``WRTE`` s (:meth:`write`)."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int, service: str):
        self.conn, self.local_id, self.remote_id, self.service = conn, local_id, remote_id, service
        self.acked = threading.Event()
        self.closed = threading.Event()
        self._in = bytearray()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._in += data
            self._cond.notify_all()

    def read(self, n: int) -> bytes | None:
        with self._cond:
            while len(self._in) < n:
                if self.closed.is_set():
                    return None
                self._cond.wait(0.2)
            out = bytes(self._in[:n])
            del self._in[:n]
            return out

    def write(self, data: bytes) -> bool:
        with self._write_lock:
            for i in range(0, len(data), self.conn.max_payload):
                if self.closed.is_set():
                    return False
                self.acked.clear()
                try:
                    self.conn.send(WRTE, self.local_id, self.remote_id, data[i : i + self.conn.max_payload])
                except OSError:  # the connection dropped
                    self.close()
                    return False
                while not self.acked.wait(0.2):
                    if self.closed.is_set():
                        return False
        return True

    def finish(self) -> None:
        """We are done: ``CLSE`` to the host (it forgets the stream)."""
        if not self.closed.is_set():
            self.closed.set()
            self.conn.streams.pop(self.local_id, None)
            try:
                self.conn.send(CLSE, self.local_id, self.remote_id)
            except OSError:
                pass

    def close(self) -> None:
        """The host closed it, or the connection dropped."""
        self.closed.set()
        self.conn.streams.pop(self.local_id, None)
        with self._cond:
            self._cond.notify_all()

    def serve(self) -> None:
        raise NotImplementedError


class ShellStream(Stream):
    def serve(self) -> None:
        head, _, command = self.service.partition(":")
        v2 = "v2" in head.split(",")[1:]
        device = self.conn.device
        if device.hang and re.search(device.hang, command):
            self.closed.wait()
            return
        env = {**os.environ, "PATH": f"{device.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.Popen(
            ["/bin/sh", "-c", device.rewrite(command)],
            cwd=device.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        root = str(device.root).encode()

        def pump(pipe, kind: int) -> None:
            for line in iter(pipe.readline, b""):
                line = line.replace(root, b"")  # host paths back to the device's
                if not self.write(struct.pack("<BI", kind, len(line)) + line if v2 else line):
                    break
            pipe.close()

        pumps = [threading.Thread(target=pump, args=a, daemon=True)
                 for a in ((proc.stdout, SHELL_STDOUT), (proc.stderr, SHELL_STDERR))]
        for t in pumps:
            t.start()
        while proc.poll() is None:
            if self.closed.wait(0.05):  # the client went away (timeout, Ctrl-C) or the cable was pulled
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for t in pumps:
            t.join(timeout=5)
        if v2:
            self.write(struct.pack("<BIB", SHELL_EXIT, 1, proc.returncode & 0xFF))
        self.finish()


class SyncStream(Stream):
    def serve(self) -> None:
        while (head := self.read(8)) is not None:
            request, length = head[:4], struct.unpack("<I", head[4:])[0]
            if request == b"QUIT":
                break
            path = self.read(length)
            if path is None or not self.handle(request, path.decode(errors="replace")):
                break
        self.finish()

    def fail(self, message: str) -> bool:
        self.write(b"FAIL" + struct.pack("<I", len(message)) + message.encode())
        return True

    def handle(self, request: bytes, path: str) -> bool:
        host = None
        if request == b"SEND":
            path, _, mode = path.rpartition(",")
        host = self.conn.device.host_path(path)
        if request == b"STAT":
            st = host.lstat() if host is not None and os.path.lexists(host) else None
            fields = (st.st_mode, st.st_size, int(st.st_mtime)) if st else (0, 0, 0)
            return self.write(b"STAT" + struct.pack("<3I", *(f & 0xFFFFFFFF for f in fields)))
        if request == b"LIST":
            out = b""
            if host is not None and host.is_dir():
                for entry in sorted(host.iterdir()):
                    st, name = entry.lstat(), entry.name.encode()
                    out += b"DENT" + struct.pack("<4I", st.st_mode, st.st_size & 0xFFFFFFFF,
                                                 int(st.st_mtime), len(name)) + name
            return self.write(out + b"DONE" + bytes(16))
        if request == b"RECV":
            if host is None or not host.is_file():
                return self.fail(f"remote object '{path}' does not exist")
            data = host.read_bytes()
            chunks = [data[i : i + SYNC_DATA_MAX] for i in range(0, len(data), SYNC_DATA_MAX)]
            out = b"".join(b"DATA" + struct.pack("<I", len(c)) + c for c in chunks)
            return self.write(out + b"DONE" + bytes(4))
        if request == b"SEND":
            return self.receive(path, host, int(mode or "420"))
        return self.fail(f"unknown sync request {request!r}")

    def receive(self, path: str, host: Path | None, mode: int) -> bool:
        data = bytearray()
        while True:
            head = self.read(8)
            if head is None:
                return False
            kind, value = head[:4], struct.unpack("<I", head[4:])[0]
            if kind == b"DONE":
                break
            if kind != b"DATA":
                return not self.fail(f"expected DATA or DONE, got {kind!r}")
            chunk = self.read(value)
            if chunk is None:
                return False
            data += chunk
        if host is None:
            return self.fail(f"couldn't create file: {path}: Permission denied")
        host.parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
        tmp = host.with_name(f".{host.name}.part")
        tmp.write_bytes(bytes(data))
        tmp.chmod(stat.S_IMODE(mode) or 0o644)
        os.utime(tmp, (value, value))
        tmp.replace(host)
        self.conn.device.received.append((path, stat.S_IMODE(mode), hashlib.sha256(data).hexdigest()))
        return self.write(b"OKAY" + bytes(4))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="an adbd-compatible device emulator (adb connect 127.0.0.1:PORT)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root", help="the device's file system (default: a temporary folder)")
    args = p.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="adbd-emulator-")
    device = EmulatedDevice(root, port=args.port).start()
    print(f"serving {device.serial} (/data/local/tmp is {device.sandbox}): adb connect {device.serial}")
    try:
        device.unplugged.wait()
    except KeyboardInterrupt:
        device.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
