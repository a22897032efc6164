"""The files pushed to a phone: the ``benchmark_model`` binary (found, and checked against the phone's
ABI through its ELF header) and the model (checked to be a TFLite flatbuffer).

Where the binary comes from, in order: ``--benchmark-binary PATH``, then the cache
``$XDG_CACHE_HOME/nasctl/benchmark_model/<abi>/benchmark_model`` (``~/.cache`` by default) for each
ABI the phone runs, primary first. The official binaries are TFLite's nightly prebuilt native
command-line tools (the ``.apk`` files beside them are the app version, not what nasctl runs).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from nasctl.profiling.backends import check_model_file
from nasctl.profiling.errors import ProfilingError

NIGHTLY = "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/latest"
PREBUILT = {  # Android ABI -> the official nightly prebuilt binary (TFLite "Performance measurement" page)
    "arm64-v8a": f"{NIGHTLY}/android_aarch64_benchmark_model",
    "armeabi-v7a": f"{NIGHTLY}/android_arm_benchmark_model",
    "armeabi": f"{NIGHTLY}/android_arm_benchmark_model",
}
BENCHMARK_TARGET = "//tensorflow/lite/tools/benchmark:benchmark_model"
BUILD_HINT = "build it with bazel build -c opt --config=android_{arch} " + BENCHMARK_TARGET
# ELF e_machine -> the Android ABIs a binary for that machine runs on
ELF_MACHINES = {
    40: ("armeabi-v7a", "armeabi"),  # EM_ARM
    183: ("arm64-v8a",),  # EM_AARCH64
    3: ("x86",),  # EM_386
    62: ("x86_64",),  # EM_X86_64
}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nasctl/benchmark_model`` (``~/.cache`` by default), one folder per ABI."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nasctl" / "benchmark_model"


def cache_path(abi: str) -> Path:
    """Where nasctl looks for the ``benchmark_model`` of one Android ABI."""
    return cache_dir() / abi / "benchmark_model"


def where_to_get(abi: str) -> str:
    """One clause: where the official binary for ``abi`` is, and where nasctl looks for it."""
    url = PREBUILT.get(abi)
    source = (
        f"download the official prebuilt {url}"
        if url
        else BUILD_HINT.format(arch={"x86_64": "x86_64", "x86": "x86"}.get(abi, abi))
    )
    # the flag is bench's and profile's: search finds the binary in the cache only
    return f"{source} to {cache_path(abi)} (nasctl bench and profile also take --benchmark-binary PATH)"


def elf_abis(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The Android ABIs an ELF executable runs on (from e_machine); None when it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", head[18:20])
    return ELF_MACHINES.get(machine, (f"e_machine {machine}",))


def check_explicit_binary(explicit: str | os.PathLike, abi: str) -> Path:
    """``--benchmark-binary PATH`` as a file. Why each case has its own words: a folder "does not exist"
    sent users looking for a path that was there; what the flag needs is the executable file itself."""
    path = Path(explicit).expanduser()
    if path.is_dir():
        inside = path / "benchmark_model"
        fix = (
            f"pass --benchmark-binary {inside}"
            if inside.is_file()
            else f"pass the path of the file itself; to get one, {where_to_get(abi)}"
        )
        raise ProfilingError(
            f"--benchmark-binary {str(path)!r} is a directory, but the flag takes TFLite's benchmark_model "
            f"executable file: {fix}"
        )
    if not path.exists():
        raise ProfilingError(f"--benchmark-binary {str(path)!r} does not exist: {where_to_get(abi)}")
    if not path.is_file():
        raise ProfilingError(
            f"--benchmark-binary {str(path)!r} is not a regular file: pass the benchmark_model executable; "
            f"{where_to_get(abi)}"
        )
    return path


def find_binary(abilist: list[str], explicit: str | os.PathLike | None = None) -> Path:
    """The ``benchmark_model`` to push to a phone that runs ``abilist`` (primary ABI first).

    Raises :class:`ProfilingError` naming the official binary when none is found, when the file is
    not an ELF executable (a downloaded ``.apk`` or HTML page), or when its ABI is not one the phone
    runs."""
    primary = abilist[0]
    if explicit is not None:
        path = check_explicit_binary(explicit, primary)
    else:
        found = [cache_path(abi) for abi in abilist if cache_path(abi).is_file()]
        if not found:
            raise ProfilingError(
                f"no benchmark_model binary for this phone's ABI {primary}: {where_to_get(primary)}"
            )
        path = found[0]
    abis = elf_abis(path)
    if abis is None:
        raise ProfilingError(
            f"{str(path)!r} is not a native executable (no ELF header; the .apk is the app version): "
            f"{where_to_get(primary)}"
        )
    if not set(abis) & set(abilist):
        raise ProfilingError(
            f"{str(path)!r} is a benchmark_model for {abis[0]}, but the phone runs {', '.join(abilist)}: "
            f"{where_to_get(primary)}"
        )
    return path


def check_tflite(path: str | os.PathLike) -> Path:
    """A readable, non-empty TFLite flatbuffer (file identifier ``TFL3`` at bytes 4-8)."""
    p = check_model_file(path)
    with open(p, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise ProfilingError(
            f"{str(p)!r} is not a TFLite model (no TFL3 identifier): nasctl bench runs .tflite files; "
            f"export one with nasctl export --target tflite"
        )
    return p
