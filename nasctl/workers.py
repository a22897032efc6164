"""Worker processes for independent items (candidates, front members, fine-tunings): spread over every
core and GPU, with results handed back in the serial order.

Why processes and not threads: a tiny net leaves most of a core idle between its small ops, so on 2
cores two one-thread workers finish two fine-tunings in 14.6 s where one two-thread process needs
20.8 s (BENCHMARKS.md, "Workers"). Each worker owns its threads (one by default) and its device, so
workers never spin against each other the way two default-threaded processes do (about 20x slower).

The rules every caller relies on:

* **Serial order**: :meth:`WorkerPool.map` yields results in the order of the items, whatever order the
  workers finish in, so the parent writes ``archive.jsonl`` and the stage folders exactly as a serial
  run does.
* **One clear failure**: a worker that dies (SIGKILL, out of memory) raises :class:`WorkerDied`,
  naming the item it was working on and its exit signal; everything yielded before it is already in
  the caller's hands (and on disk). An exception inside a task is re-raised in the parent as it is.
* **No orphans**: workers ignore Ctrl-C (the parent stops them), and die with their parent
  (``PR_SET_PDEATHSIG`` on Linux, else a watchdog thread that polls the parent).
* **Fresh interpreters** (``spawn``): a worker never inherits the parent's torch threads or CUDA state.

The pool knows nothing of search or training: ``init`` (a module-level function) builds a worker's
state once, from ``initargs``; each task is a module-level function called with one item.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .errors import NasctlError

AUTO = "auto"


class WorkerDied(NasctlError):
    """A worker process ended without answering: the item it was on, and how it ended. Exit status 1
    (the run itself is sound: ``--resume`` continues it)."""

    exit_code = 1


def parse_workers(value: int | str | None, flag: str = "--workers") -> int | str:
    """``auto`` or a count >= 1 (a CLI string, a config value or an int)."""
    if value is None or value == AUTO:
        return AUTO
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NasctlError(f"{flag} must be 'auto' or a count >= 1, got {value!r}") from None
    if n < 1:
        raise NasctlError(f"{flag} must be 'auto' or a count >= 1, got {n}")
    return n


def resolve_workers(value: int | str | None, device: str = "cpu", cores: int | None = None,
                    per_gpu: int = 1) -> int:
    """How many workers ``value`` means here: a count as given; ``auto`` is the GPUs visible times
    ``per_gpu`` on a CUDA device, else the cores this process may use (each worker one thread)."""
    value = parse_workers(value)
    if value != AUTO:
        return int(value)
    if str(device).startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count() * max(1, per_gpu))
    if cores is None:
        from .threads import usable_cores

        cores = usable_cores()
    return max(1, cores)


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each worker: on CUDA the visible GPUs dealt round-robin, else ``device`` for all."""
    if str(device).startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        if n > 1 and str(device) == "cuda":
            return [f"cuda:{i % n}" for i in range(workers)]
    return [str(device)] * workers


# --- inside a worker ------------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}  # this worker process's own: its device and what ``init`` built


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _boot(parent: int, threads: int, devices: Sequence[str], counter, init: Callable | None,
          initargs: tuple, journal) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = devices[index % len(devices)]
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    _STATE.clear()
    _STATE.update(index=index, device=device, journal=journal)
    if init is not None:
        _STATE["value"] = init(device, *initargs)


def worker_state() -> Any:
    """What this worker's ``init`` returned (called from inside a task)."""
    return _STATE["value"]


def _run(fn: Callable, label: str, item: Any) -> Any:
    _STATE["journal"].put((os.getpid(), label))  # which item this process is on, should it die
    return fn(item)


# --- the parent's side ----------------------------------------------------------------------------------
class WorkerPool:
    """``workers`` spawned processes, each pinned to ``threads`` threads and to its device
    (:func:`worker_devices`), each running ``init(device, *initargs)`` once. Use as a context manager;
    leaving it stops every worker (Ctrl-C included)."""

    def __init__(self, workers: int, init: Callable | None = None, initargs: tuple = (), threads: int = 1,
                 device: str = "cpu") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ctx = mp.get_context("spawn")
        self.workers = workers
        self._journal = ctx.SimpleQueue()
        self._on: dict[int, str] = {}  # pid -> the label of the item it last started
        self._procs: dict[int, Any] = {}  # pid -> its Process (the pool forgets them once broken)
        counter = ctx.Value("i", 0)
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_boot,
            initargs=(os.getpid(), threads, worker_devices(device, workers), counter, init, initargs,
                      self._journal))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        """Stop the workers: at once with ``kill`` (an error or Ctrl-C in the parent), else when idle."""
        if kill:
            for p in [*self._procs.values(), *(getattr(self._pool, "_processes", None) or {}).values()]:
                with contextlib.suppress(Exception):
                    p.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            labels: Callable[[Any], str] = str) -> Iterator[Any]:
        """``fn(item)`` for every item, run by the workers, yielded in the items' order. At most
        ``2 * workers`` items are in flight, so a failure stops the stage early."""
        items = list(items)
        futures: dict[int, cf.Future] = {}
        nxt = 0
        i = 0
        try:
            for i in range(len(items)):
                while nxt < len(items) and nxt - i < 2 * self.workers:
                    futures[nxt] = self._pool.submit(_run, fn, labels(items[nxt]), items[nxt])
                    self._procs.update(getattr(self._pool, "_processes", None) or {})
                    nxt += 1
                result = futures.pop(i).result()
                self._drain()
                yield result
        except cf.process.BrokenProcessPool:
            raise self._died(labels(items[i])) from None
        finally:
            for f in futures.values():
                f.cancel()

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      labels: Callable[[Any], str] = str) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` as each finishes, every item submitted at once in the order given: for
        a few long items of unequal cost (the fine-tune stage's members), given largest first, so no
        worker is left with the longest one at the end; each can be saved as soon as it is done."""
        futures: dict[cf.Future, int] = {}
        i = 0
        try:
            for i, item in enumerate(items):
                futures[self._pool.submit(_run, fn, labels(item), item)] = i
            self._procs.update(getattr(self._pool, "_processes", None) or {})
            for f in cf.as_completed(futures):
                i = futures[f]
                result = f.result()
                self._drain()
                yield i, result
        except cf.process.BrokenProcessPool:
            raise self._died(labels(items[i])) from None
        finally:
            for f in futures:
                f.cancel()

    def _drain(self) -> None:
        while not self._journal.empty():
            pid, label = self._journal.get()
            self._on[pid] = label

    def _died(self, fallback: str) -> WorkerDied:
        self._drain()
        # the pool terminates (SIGTERM) the others once one has died: the first to die is the one that
        # did not end by SIGTERM
        for p in self._procs.values():
            p.join(timeout=5)  # the pool is stopping them: wait for their exit codes
        dead = sorted(((pid, p.exitcode) for pid, p in self._procs.items() if p.exitcode not in (None, 0)),
                      key=lambda d: d[1] == -signal.SIGTERM)
        if dead:
            pid, code = dead[0]
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            label = self._on.get(pid, fallback)
        else:
            pid, how, label = None, "ended", fallback
        who = f"worker process {pid}" if pid else "a worker process"
        return WorkerDied(f"{who} {how} while working on {label}; what finished before it is saved")


# --- torchrun ranks -------------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun (``RANK``/``WORLD_SIZE``), (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def process_group(device: str) -> Iterator[bool]:
    """torch.distributed for the length of the ``with`` block when torchrun started this process (gloo on
    a CPU, NCCL on CUDA; torchrun's rendezvous, no networking of our own); yields whether it is set up.
    An existing group is used as it is and left alone."""
    _, size = world()
    if size <= 1:
        yield False
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield True
        return
    dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    try:
        yield True
    finally:
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankPool:
    """The same ``map`` as :class:`WorkerPool` across torchrun ranks: every rank runs the same run, rank
    ``r`` computes items ``r, r + N, ...`` in this process, and the results are gathered to every rank
    (``all_gather_object``) and yielded in the items' order, so every rank's search goes on identically
    and rank 0 writes the run folder. A rank that dies ends the job through torchrun, which stops the
    others and reports it."""

    def __init__(self, state: Any, device: str = "cpu") -> None:
        """``state``: what the tasks read with :func:`worker_state` -- built by the caller, who already
        holds it in this process (a process pool's workers build theirs with ``init``)."""
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.workers = self.world
        _STATE.clear()
        _STATE.update(index=self.rank, device=device, journal=None, value=state)

    def __enter__(self) -> RankPool:
        return self

    def __exit__(self, *_) -> None:
        _STATE.clear()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            labels: Callable[[Any], str] = str) -> Iterator[Any]:
        import torch.distributed as dist

        items = list(items)
        mine = {i: fn(items[i]) for i in range(self.rank, len(items), self.world)}
        gathered: list[dict[int, Any] | None] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        merged = {i: r for part in gathered for i, r in (part or {}).items()}
        for i in range(len(items)):
            yield merged[i]

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      labels: Callable[[Any], str] = str) -> Iterator[tuple[int, Any]]:
        """As :meth:`WorkerPool.map_unordered`: rank ``r`` takes items ``r, r + N, ...`` of the order given
        (largest first deals the long items evenly)."""
        yield from enumerate(self.map(fn, items, labels))
