"""On-device benchmarking over adb: TFLite's ``benchmark_model`` on Android phones.

Modules, one job each: ``adb`` (the one adb wrapper and its one-line errors), ``device`` (attached
phones and their fingerprint from ``getprop``), ``binary`` (finding ``benchmark_model`` and checking
its ABI; checking models are TFLite), ``parse`` (benchmark_model output -> numbers, a pure function),
``runner`` (push, run, repeat, cool down, clean up; one worker per phone), ``target`` (a phone as
profiling's measuring target, the plug-in ``profiling.target.DEVICE_PLUGINS`` names). The command line is
``nasctl devices`` and ``nasctl bench``; docs/android.md has the phone set-up.

Importing this package registers the ``adb`` latency backend with :mod:`nasctl.profiling` (suffix
``.tflite``). Its ``runtime_version`` is ``benchmark_model sha256:<first 12 hex>`` of the binary
pushed: TFLite is linked into that one file, so its hash pins the runtime exactly (a new nightly is a
new scope in the store); the version the tool prints, when it prints one, is kept in the result's
``extra["binary"]``. ``distribution`` names the tool, not a pip package: nothing to install on the
host besides adb.
"""

from nasctl.profiling.backends import BACKENDS, Backend, register_backend

ADB_BACKEND = Backend(
    name="adb",
    suffixes=(".tflite",),
    distribution="benchmark_model",
    measure="nasctl.android_bench.runner:measure_adb",
    help="TFLite benchmark_model on an Android phone over adb (nasctl bench)",
)

if BACKENDS.get(ADB_BACKEND.name) != ADB_BACKEND:
    register_backend(ADB_BACKEND)

__all__ = ["ADB_BACKEND"]
