"""How many CPU threads nasctl's torch work takes, and how they wait, so that jobs sharing cores do not
collapse.

Why: torch's OpenMP threads spin while they wait for work. Two processes that each run one thread per
core on the same cores then burn each other's time slices spinning: measured here, a Fashion-MNIST
search beside another search trained at 0.3-0.4 batches/s instead of 7.5 (about 20x slower). Three
rules avoid it (``docs/design.md``, "Threads"):

* **Passive waiting when cores are shared**: a nasctl process that starts while another nasctl process
  runs (each registers itself for its lifetime, :func:`sharing_cores`) or while the machine is busy
  makes its OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``, set before torch starts
  OpenMP; a policy the user set is kept). Measured on 2 cores (BENCHMARKS.md, "Jobs side by side"):
  a short search alone 69 s; two at once 339 s each with spinning threads, 110-160 s with passive
  ones. A lone run keeps spinning threads: passive waiting would cost it 67 % (115 s), since tiny
  nets wake their threads for every small op. Waiting never changes a result.
* **A fixed thread count**: ``--threads`` when given, else ``OMP_NUM_THREADS``, else the cores this
  process may use (its CPU affinity, capped by a cgroup CPU quota, which ``os.cpu_count`` ignores). It
  is deliberately *not* chosen from the machine's load: the thread count changes floating-point
  reduction order, and the same seed must give the same result on the same machine. It is recorded in
  every run's ``config.json``.
* **One warning** when the machine is already busy at start (the 1-minute load average leaves fewer
  idle cores than the threads about to start) and the user did not choose a count, with the fix for
  heavy jobs side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, MutableMapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a process uses, where it came from, and the machine it saw."""

    threads: int
    cores: int  # the cores this process may use
    source: str  # "--threads", "OMP_NUM_THREADS" or "cores"
    load: float | None  # 1-minute load average at start (None where the OS has none)

    def busy_warning(self) -> str | None:
        """One line when the threads about to start do not fit into the idle cores, else None."""
        if self.source != "cores":  # the user chose the count (--threads, OMP_NUM_THREADS): no advice
            return None
        if self.load is None or self.load < 1.0 or self.load + self.threads <= self.cores + 0.5:
            return None
        return (f"the machine is busy (load {self.load:.1f} on {self.cores} cores) and nasctl starts "
                f"{self.threads} thread(s): both jobs slow down. For heavy jobs side by side give each "
                f"--threads 1 (or OMP_NUM_THREADS=1)")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota) if quota else n)


def _cgroup_cpu_quota() -> int | None:
    try:
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if parts and parts[0] != "max":
            return math.ceil(int(parts[0]) / int(parts[1]))
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return math.ceil(q / p)
    except (OSError, ValueError):
        pass
    return None


def choose_threads(requested: int | None = None,
                   environ: MutableMapping[str, str] | None = None) -> ThreadChoice:
    """The thread count for this process: ``requested`` (``--threads``), else a valid
    ``OMP_NUM_THREADS``, else :func:`usable_cores`. Raises ValueError for a requested count < 1."""
    env = os.environ if environ is None else environ
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return ThreadChoice(requested, cores, "--threads", load)
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), cores, "OMP_NUM_THREADS", load)
    return ThreadChoice(cores, cores, "cores", load)


def machine_busy(cores: int | None = None, sample_s: float = 0.25) -> bool:
    """Whether other work already fills the cores this process may use, but one.

    The 1-minute load average lags: for a minute after a job ends it still says busy, and a job started
    then (the main job run twice in a row) would wait passively for nothing and run about 2x slower
    (seen here: supernet training 143 s instead of 65 s). So a busy load average is confirmed by what the
    CPUs do now: their busy time over ``sample_s`` seconds from ``/proc/stat``, where there is one."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    limit = max(1.0, (cores or usable_cores()) - 0.5)
    if load < limit:
        return False
    now = busy_cpus_now(sample_s)
    return now is None or now >= limit


def busy_cpus_now(sample_s: float = 0.25) -> float | None:
    """How many CPUs were busy over the next ``sample_s`` seconds (``/proc/stat``); None without it."""
    def read() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    first = read()
    if first is None:
        return None
    time.sleep(sample_s)
    second = read()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (1 - idle / total) * (os.cpu_count() or 1)


def registry_dir() -> Path:
    """Where running nasctl processes register (one locked file each): per user, in the temp folder."""
    return Path(tempfile.gettempdir()) / f"nasctl-{os.getuid()}" / "running"


@contextlib.contextmanager
def sharing_cores(folder: Path | None = None) -> Iterator[int]:
    """Register this process as a running nasctl job for the ``with`` block; yield how many other nasctl
    jobs run now. Each job holds an ``fcntl.flock`` on its own file, which the kernel drops when the
    process dies however it dies, so a killed job never counts; its file is removed by the next one."""
    folder = registry_dir() if folder is None else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        me = folder / str(os.getpid())
        fd = os.open(me, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # an unwritable temp folder: run as if alone rather than fail
        yield 0
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        others = 0
        for path in folder.iterdir():
            if path == me:
                continue
            try:
                other = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # nobody holds it: a job that died
            except BlockingIOError:
                others += 1
            finally:
                os.close(other)
        yield others
    finally:
        os.close(fd)
        me.unlink(missing_ok=True)


def prepare_openmp(shared: bool, environ: MutableMapping[str, str] | None = None) -> None:
    """Make OpenMP threads wait passively when the cores are ``shared`` (another nasctl job runs, or the
    machine is busy), unless the user chose a policy. Must run before torch is imported: OpenMP reads
    the variable once, when it starts."""
    env = os.environ if environ is None else environ
    if shared:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op threads (and OMP_NUM_THREADS, which worker processes inherit)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    torch.set_num_threads(choice.threads)
    warning = choice.busy_warning()
    if warning:
        log.warning("nasctl: warning: %s", warning)
