"""Latency and size on real runtimes, and the measurements that make latency a search objective.

* :func:`measure` times model files on a backend (LiteRT, ONNX Runtime, PyTorch; phones register one
  more) in a fresh process and returns :class:`LatencyResult` s.
* :class:`MeasurementStore` keeps every number in one SQLite file, keyed by device fingerprint,
  backend, runtime version, precision and threads.
* :func:`build_table` measures a space's lookup table (every block at every position and width),
  :func:`calibrate` fits the whole-model predictor, :func:`load_table` reads them back.
* :class:`LatencySources` is what ``nasctl search --latency-source`` hands the search
  (:func:`open_latency_source` behind it).


Names resolve lazily (PEP 562): the measuring worker, ``python -m nasctl.profiling.worker``, imports this
package first and must stay free of torch and TensorFlow, so that its memory and timing are the model's.
"""

import importlib

_EXPORTS = {
    "backends": ("BACKENDS", "Backend", "ProfileSettings", "get_backend", "measure", "register_backend"),
    "device": ("DeviceInfo", "host_device"),
    "errors": ("ProfilingError",),
    "lut": (
        "LatencyTable",
        "LutEntry",
        "accuracy",
        "build_table",
        "calibrate",
        "genome_entries",
        "load_table",
        "measure_genomes",
        "sample_genomes",
        "space_entries",
    ),
    "result": ("LatencyResult",),
    "source": ("LatencySource", "LatencySources", "open_latency_source", "parse_latency_source"),
    "store": ("MeasurementStore", "Scope", "default_store_path", "open_store"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
