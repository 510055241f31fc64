"""The llama.cpp thread count chosen per request from what the rest of the machine uses.

llama.cpp's threads spin while they wait for each other, so a thread more than the free
cores costs far more than it brings, and a thread fewer than the free cores leaves speed
unused. :class:`ThreadChooser` measures, before each request, how much CPU the *other*
processes used in the last moment (the busy time from ``/proc/stat`` minus this
process's own, so the model's own threads never count as load; under ``taskset`` or a
cpuset, only the CPUs this process may use) and picks every physical core the others
leave free, at least one; when the others' runnable threads fill every core anyway (a
heavily shared machine), it takes every core, since the scheduler then shares the CPU
out per thread. llama.cpp takes the new count between evaluations
(``llama_set_n_threads``); prompt evaluation keeps its own count (:func:`batch_threads`,
llama-cpp-python's default), since only generation was measured to suffer. Figures:
benchmarks/README.md, "llama.cpp threads".
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import psutil

#: A neighbour using less than this share of a core does not cost a thread.
SLACK = 0.25
#: Looks closer together than this reuse the previous choice (too short to measure).
MIN_WINDOW = 0.2
#: Seconds between background samples.
TICK = 0.4


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, or None when that is every CPU of the machine."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None
    return None if len(allowed) >= (psutil.cpu_count() or 1) else allowed


def physical_cores() -> int:
    """Physical cores this process may use (``taskset``/cpuset respected), at least one."""
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    allowed = usable_cpus()
    return max(1, min(physical, len(allowed))) if allowed is not None else physical


def batch_threads() -> int:
    """Threads for prompt evaluation: every logical CPU this process may use, as
    llama-cpp-python's default (all logical CPUs) but within ``taskset``; not adapted."""
    allowed = usable_cpus()
    return len(allowed) if allowed is not None else psutil.cpu_count() or 1


def threads_for(others: float, cores: int, waiting: float = 0.0) -> int:
    """Threads to use when other processes keep ``others`` cores busy: the free whole cores.

    ``others`` below :data:`SLACK` of a core costs nothing (the agents, an editor); each
    core's worth above it costs one thread; never fewer than one, never more than ``cores``.
    When ``waiting`` (the other processes' runnable threads, on average) fills every core,
    no core is free to protect: the scheduler shares the CPU out per thread, so every core
    gets a thread (on the 2-core machine under a load average of 9-15, 2 threads generated
    2.5x as fast as 1; with one busy neighbour, 1 thread was the faster).
    """
    if waiting >= cores:
        return cores
    return max(1, min(cores, cores - math.ceil(others - SLACK)))


@attrs.frozen
class CpuSample:
    """One moment: the machine's busy CPU seconds, this process's own, and how many threads
    of other processes were runnable (running or waiting for a CPU)."""

    wall: float
    machine_busy: float
    own: float
    waiting: float = 0.0


def _busy(times: Any) -> float:
    """Busy CPU seconds of a ``psutil.cpu_times()`` record (everything but idle and iowait)."""
    return float(times.user + times.system + sum(getattr(times, f, 0.0) for f in _BUSY_EXTRA))


_BUSY_EXTRA = ("nice", "irq", "softirq", "steal")


def take_sample(cpus: list[int] | None = None) -> CpuSample:
    """Now: the busy time of ``cpus`` (all when None) and this process's own CPU time."""
    if cpus is None:
        busy = _busy(psutil.cpu_times())
    else:
        per_cpu = psutil.cpu_times(percpu=True)
        busy = sum(_busy(per_cpu[i]) for i in cpus if i < len(per_cpu))
    own = psutil.Process().cpu_times()
    return CpuSample(time.monotonic(), busy, own.user + own.system, max(0, _runnable() - _own_runnable()))


def _runnable() -> int:
    """Runnable threads on the machine now (``/proc/loadavg``'s 4th field), 0 if unknown."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def _own_runnable() -> int:
    """This process's threads that are runnable now (this one, reading, included)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                count += f.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return count


class ThreadChooser:
    """Picks ``n_threads`` for each request from the other processes' recent CPU use.

    A daemon thread (:meth:`start`) samples the CPU counters every :data:`TICK` seconds, so
    a request measures the last 0.2-1 s, not the average since the previous request: a
    neighbour that started a moment ago is seen. Without it (never started), the window is
    the time since the previous request. Thread-safe.
    """

    def __init__(self, cores: int | None = None, sample: Callable[[], CpuSample] | None = None) -> None:
        self.cores = cores or physical_cores()
        if sample is None:
            cpus = usable_cpus()  # under taskset, only the allowed CPUs' load matters

            def sample() -> CpuSample:
                return take_sample(cpus)

        self._sample = sample
        self._lock = threading.Lock()
        self._recent: deque[CpuSample] = deque([sample()], maxlen=3)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.others = 0.0  # cores the other processes kept busy in the last window
        self.waiting = 0.0  # their runnable threads then, on average
        self.threads = self.cores  # the last choice

    def start(self) -> None:
        """Begin sampling in the background (idempotent)."""
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="oblix-llama-cpu", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            sample = self._sample()
            with self._lock:
                self._recent.append(sample)

    def choose(self) -> int:
        """The thread count for the next request, from the other processes' recent CPU use."""
        with self._lock:
            now = self._sample()
            usable = [s for s in self._recent if now.wall - s.wall >= MIN_WINDOW]
            if not usable:
                return self.threads  # the last look was a moment ago: too short to measure
            then = usable[-1]
            window = now.wall - then.wall
            busy = (now.machine_busy - then.machine_busy) - (now.own - then.own)
            seen = [s.waiting for s in self._recent if s.wall >= then.wall] + [now.waiting]
            if self._ticker is None:
                self._recent.append(now)
            self.others = max(0.0, busy / window)
            self.waiting = sum(seen) / len(seen)
            self.threads = threads_for(self.others, self.cores, self.waiting)
            return self.threads

    def describe(self) -> dict[str, object]:
        return {
            "mode": "adaptive",
            "cores": self.cores,
            "last": self.threads,
            "others_busy": round(self.others, 2),
            "others_runnable": round(self.waiting, 2),
        }
