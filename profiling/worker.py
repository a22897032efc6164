"""The measuring process: ``python -m nasctl.profiling.worker`` times model files on one host runtime.

Why a separate process: a model is timed in a fresh interpreter that has imported nothing but its
runtime -- no TensorFlow converter threads, no PyTorch training pools, no memory left over from
earlier models -- and its peak resident memory is the run's own. The parent sends one JSON job on
stdin and reads one JSON line per model from stdout (``{"ok": ...}`` or ``{"error": ...}``).

Job: ``{"backend", "models": [paths], "threads", "runs", "warmup", "min_seconds", "max_runs",
"reference": path | null, "reference_every": n}``. The reference model is timed first, after every
``reference_every`` models and last; the relative spread of its medians is the session's drift.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from nasctl.procfs import proc_kib_field


class LiteRTRunner:
    """LiteRT interpreter (XNNPACK delegate applied by default, as on phones), input set once."""

    runtime = "ai-edge-litert"

    def __init__(self, path: str, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=path, num_threads=threads)
        self.it.allocate_tensors()
        d = self.it.get_input_details()[0]
        self.it.set_tensor(d["index"], _random_input(d["shape"], np.dtype(d["dtype"])))
        self.input_shape = [int(v) for v in d["shape"]]
        self.extra = {"delegate": "xnnpack (default)", "input_dtype": np.dtype(d["dtype"]).name}

    def invoke(self) -> None:
        self.it.invoke()


class OnnxRuntimeRunner:
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.feed = {inp.name: _random_input(shape, np.dtype(np.float32))}
        self.input_shape = shape
        self.extra = {"provider": "CPUExecutionProvider"}

    def invoke(self) -> None:
        self.session.run(None, self.feed)


class TorchRunner:
    """A nasctl subnet checkpoint or a TorchScript file (with ``nasctl.json`` naming its input shape)."""

    runtime = "torch"

    def __init__(self, path: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, shape = _load_torch(path)
        self.x = torch.rand(*shape)
        self.input_shape = list(shape)
        self.extra = {"mode": "eval, torch.inference_mode"}

    def invoke(self) -> None:
        with self.torch.inference_mode():
            self.model(self.x)


def _load_torch(path: str):
    import torch

    extra = {"nasctl.json": ""}
    try:
        model = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        meta = json.loads(extra["nasctl.json"] or "{}")
        if "input_shape" not in meta:
            raise ValueError(f"{path} is a TorchScript file without nasctl.json (its input shape)")
        return model.eval(), meta["input_shape"]
    except RuntimeError:
        pass  # not TorchScript: a nasctl subnet checkpoint?
    from nasctl.nas.supernet.subnet_ckpt import load_subnet

    loaded = load_subnet(path)
    ds = loaded.dataset
    return loaded.model.eval(), [1, ds["in_channels"], ds["resolution"], ds["resolution"]]


RUNNERS = {"litert": LiteRTRunner, "onnxruntime": OnnxRuntimeRunner, "torch": TorchRunner}


def _random_input(shape, dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = [int(v) for v in shape]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def time_runner(
    runner, runs: int, warmup: int, min_seconds: float, max_runs: int
) -> tuple[list[float], float]:
    """Warm up, then time single invocations until ``runs`` are done and ``min_seconds`` have passed
    (at most ``max_runs``): tiny models get many runs, so their median is stable too. Returns the
    times (ms) and the seconds the timed loop took (short of ``min_seconds``: the cap ended it)."""
    for _ in range(warmup):
        runner.invoke()
    times: list[float] = []
    start = time.perf_counter()
    clock = time.perf_counter_ns
    while len(times) < runs or (time.perf_counter() - start < min_seconds and len(times) < max_runs):
        t0 = clock()
        runner.invoke()
        times.append((clock() - t0) / 1e6)
    return times, time.perf_counter() - start


def cap_hit(n_runs: int, seconds: float, runs: int, min_seconds: float, max_runs: int) -> dict | None:
    """What to record when ``max_runs``, not ``min_seconds``, ended the timing (None when it did not):
    a user who asked for 30 s must learn that the run stopped at the cap instead."""
    if n_runs >= max_runs and n_runs >= runs and seconds < min_seconds:
        return {"max_runs": max_runs, "timed_seconds": round(seconds, 6), "min_seconds": min_seconds}
    return None


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process. VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss``
    across ``exec``, so it would report the parent's peak (a torch-loaded CLI) instead of the run's."""
    vm_hwm = proc_kib_field("/proc/self/status", "VmHWM")
    if vm_hwm is not None:
        return vm_hwm
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def run_job(job: dict[str, Any], emit) -> None:
    cls = RUNNERS[job["backend"]]
    threads = int(job["threads"])
    args = (int(job["runs"]), int(job["warmup"]), float(job["min_seconds"]), int(job["max_runs"]))
    ref_path, every = job.get("reference"), max(1, int(job.get("reference_every") or 1))
    try:
        ref_runner = cls(ref_path, threads) if ref_path else None
    except Exception:  # noqa: BLE001 -- a reference that does not load is reported as its model's error
        ref_runner = None
    ref_medians: list[float] = []

    def time_reference():
        if ref_runner is not None:
            ref_medians.append(float(np.median(time_runner(ref_runner, *args)[0])))

    time_reference()
    for i, path in enumerate(job["models"]):
        try:
            runner = cls(path, threads)
            t0, c0 = time.perf_counter(), time.process_time()
            times, timed = time_runner(runner, *args)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU seconds per wall second while timing: about 1 on one thread; above the thread count
            # means the runtime used more threads than asked for
            runner.extra["cpu_per_wall"] = round(cpu / wall, 3) if wall > 0 else None
            if (cap := cap_hit(len(times), timed, args[0], args[2], args[3])) is not None:
                runner.extra["max_runs_hit"] = cap
            emit(
                {
                    "ok": True,
                    "model": path,
                    "times_ms": times,
                    "input_shape": runner.input_shape,
                    "extra": runner.extra,
                    "seconds": time.perf_counter() - t0,
                    "peak_memory_bytes": _peak_rss_bytes(),
                }
            )
        except Exception as e:  # noqa: BLE001 -- one model that cannot load must not stop the batch
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            emit({"ok": False, "model": path, "error": f"{type(e).__name__}: {first}"})
        if ref_runner is not None and (i + 1) % every == 0 and i + 1 < len(job["models"]):
            time_reference()
    time_reference()
    emit({"reference_medians_ms": ref_medians, "affinity": sorted(os.sched_getaffinity(0))})


def main() -> int:
    job = json.loads(sys.stdin.read())
    # the runtimes print to fd 1/2 from C++ (XNNPACK's INFO line): keep the protocol's stdout clean
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def emit(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    run_job(job, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
