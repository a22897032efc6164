"""Small helpers every nasctl package shares: atomic writes, file hashes, versions, "did you mean",
the compute device. One copy of each, imported by ``nas``, ``export`` and the tools built on them.

Light on purpose: nothing heavy is imported at module load (torch only inside the functions that
need it), so the command line and future device tools (adb) can use it without paying for torch.
"""

from __future__ import annotations

import csv
import difflib
import errno
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from .procfs import proc_kib_field

# packages whose version can change a result; every run folder records them
VERSIONED = ("nasctl", "torch", "torchvision", "numpy", "pymoo", "scikit-learn", "onnx", "onnxruntime",
             "onnx2tf", "tensorflow", "ai-edge-litert")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one under the real name, never a
    truncated one; the temp file is removed on any failure. The result gets ordinary permissions
    (mkstemp makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """``rows`` (the header first) as CSV text in the csv module's default dialect: one writer for every
    table a run or a study writes, so they all quote and end lines alike."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _canonical(obj: Any) -> Any:
    """``obj`` with every string interned and every plain container rebuilt.

    Pickle writes a string it has seen before as a back-reference, so its bytes depend on which equal
    strings are the same object: a state made by training and the same state read back from disk
    pickled differently. Interned, equal strings are one object in both.
    """
    if type(obj) is str:
        return sys.intern(obj)
    if type(obj) is dict:
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory: equal objects give equal bytes, in any process.

    Saved to a file, torch names the zip's top folder after the file, and an atomic write's file is a
    random temp name, so two saves of identical weights differed (and a re-saved checkpoint looked
    "replaced" to every reader that checks its SHA-256). In memory the folder is always ``archive``;
    :func:`_canonical` removes the other difference, pickle's back-references.
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(_canonical(obj), buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically and byte-for-byte reproducibly (see :func:`torch_bytes`); a failed write
    becomes an OSError that says what happened, ENOSPC when the disk is full.

    A file that already holds exactly these bytes is left alone, so re-saving unchanged weights (a
    resume at the last epoch) neither rewrites nor re-stamps the file.
    """
    try:
        data = torch_bytes(obj)
    except RuntimeError as e:
        raise OSError(errno.EIO, f"torch.save failed ({str(e).splitlines()[0]})", str(path)) from e
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return

    def write(tmp: str) -> None:
        try:
            Path(tmp).write_bytes(data)
        except OSError as e:
            full = e.errno == errno.ENOSPC or shutil.disk_usage(path.parent).free < (1 << 20)
            raise OSError(errno.ENOSPC if full else e.errno, os.strerror(errno.ENOSPC) if full else
                          e.strerror, str(path)) from e

    atomic_write_with(path, write)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks: identifies a checkpoint across copies and moves."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages that can change a result (missing ones omitted)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in (*VERSIONED, *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_json_object(path: str | os.PathLike, *, missing: str | None = None,
                     fix: str = "restore it, or start a new run",
                     error: type[Exception] | None = None) -> dict:
    """The JSON object in ``path``, or one error line (``error``, default ``NasctlError``): ``missing`` when
    the file is absent (None: the file is assumed to exist), else that it is not valid JSON or not an
    object, followed by ``fix``. Every run file a command reads back goes through here."""
    from nasctl.errors import NasctlError

    error = error or NasctlError
    path = Path(path)
    if missing is not None and not path.is_file():
        raise error(missing)
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{str(path)!r} is not valid JSON ({e}): {fix}") from e
    if not isinstance(doc, dict):
        raise error(f"{str(path)!r} must hold a JSON object: {fix}")
    return doc


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``: the tail of an error line."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def mem_available_bytes() -> int | None:
    """The kernel's MemAvailable (``/proc/meminfo``) in bytes; None where there is none (not Linux). One
    reader for the data loader's memory check and the supernet's size check, so both see one number."""
    return proc_kib_field("/proc/meminfo", "MemAvailable")


def torch_threads() -> int | None:
    """torch's intra-op thread count in this process (it can change floating-point results, so every run
    records it), or None where torch was never imported."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def resolve_device(name: str):
    """``auto`` -> CUDA when available, else CPU; a CUDA device asked for on a machine without one is
    one clear error (raised as the caller's ``NasctlError``)."""
    import torch

    from nasctl.errors import NasctlError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NasctlError(f"--device {name}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}); "
                          f"use --device cpu or install a CUDA build of torch")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise NasctlError(f"--device {name!r} is not a device ({e}): use auto, cpu, cuda or cuda:N") from e
