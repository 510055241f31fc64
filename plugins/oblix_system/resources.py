"""``ResourceMonitor``: CPU, memory, load average and NVIDIA GPUs, sampled in the background.

States and thresholds (all configurable through ``custom_thresholds``):

* ``CRITICAL``    -- CPU or memory at or above ``critical_threshold`` (95 %), or a GPU at or
  above ``critical_gpu`` (95 %): local inference would suffer badly; target ``CLOUD``.
* ``CONSTRAINED`` -- CPU at or above ``cpu_threshold`` (80 %), memory at or above
  ``memory_threshold`` (85 %), normalised load at or above ``load_threshold`` (4.0), or a
  GPU at or above ``gpu_threshold`` (85 %); target ``CLOUD``.
* ``AVAILABLE``   -- otherwise; target ``LOCAL_GPU`` when a GPU is present, else ``LOCAL_CPU``.

**Oblix's own work is not "the machine is busy".** CPU is measured twice over the same
span: the system figure and this process's own (``psutil.Process().cpu_percent()``, all
its threads: llama.cpp inference included). The states above use ``other_cpu_percent``
= system CPU minus this process's share, so a local model generating at full speed
leaves the monitor ``AVAILABLE``; "the local model is busy" is a separate signal that
the backend gives (``ModelBackend.busy``/``queue_depth``) and that routing uses to send
concurrent requests to an idle model instead. Likewise the load average used is the
1-minute load minus an estimate of this process's part of it (its CPU use, averaged
the way the kernel averages load), normalised to four cores (``load * 4 / logical
CPUs``, so the default 4.0 means "every core busy by other programs"). Because load
lags by about a minute, it counts only while other programs also use at least half of
``cpu_threshold`` now. Memory is the whole machine's (a model's weights do take memory).

Smoothing: a state change is published only when the last ``smoothing`` samples (default
3) agree, so one spike does not flip routing back and forth; the first sample is
published at once.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from typing import Any

import psutil

from oblix.plugin import AgentCheck, AgentState, BaseAgent, ConfigError, Target
from oblix_system.gpu import read_gpus

MIN_CPU_SPAN = 0.2
#: A shorter span for the first sample, which a one-shot command waits for (<= 300 ms in all).
FIRST_CPU_SPAN = 0.1
#: Time constant of the kernel's 1-minute load average, in seconds.
LOAD_WINDOW = 60.0
DEFAULT_THRESHOLDS: dict[str, float] = {
    "cpu_threshold": 80.0,
    "memory_threshold": 85.0,
    "load_threshold": 4.0,
    "gpu_threshold": 85.0,
    "critical_gpu": 95.0,
    "critical_threshold": 95.0,
}


class ResourceMonitor(BaseAgent):
    """Watches this machine's resources; see the module docstring for the rules."""

    default_name = "resource_monitor"

    def __init__(
        self,
        name: str | None = None,
        custom_thresholds: dict[str, float] | None = None,
        interval: float = 2.0,
        smoothing: int = 3,
    ) -> None:
        super().__init__(name, interval)
        unknown = set(custom_thresholds or {}) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise ConfigError(
                f"Unknown ResourceMonitor thresholds: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(DEFAULT_THRESHOLDS)})."
            )
        self.thresholds = {
            **DEFAULT_THRESHOLDS,
            **{k: float(v) for k, v in (custom_thresholds or {}).items()},
        }
        if smoothing < 1:
            raise ConfigError("smoothing must be at least 1.")
        self.smoothing = smoothing
        self._recent: deque[str] = deque(maxlen=smoothing)
        self._published: str | None = None
        self._process = psutil.Process()
        self._own_load = 0.0  # this process's part of the load average (an estimate)
        self._cpu_primed_at = time.monotonic()
        # prime both counters: the next reading measures from here, over the same span
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    def _cpu(self) -> tuple[float, float]:
        """System CPU % and this process's CPU % (of one core), over the same span."""
        # a reading over a very short span is noise: measure over at least MIN_CPU_SPAN seconds
        span = time.monotonic() - self._cpu_primed_at
        least = FIRST_CPU_SPAN if self._published is None else MIN_CPU_SPAN
        if span < least:
            self.pause(least - span)  # a later sample is abandoned at once if the agent stops
        system = psutil.cpu_percent(interval=None)
        own = self._process.cpu_percent(interval=None)
        elapsed = time.monotonic() - self._cpu_primed_at
        self._cpu_primed_at = time.monotonic()
        decay = math.exp(-elapsed / LOAD_WINDOW)
        self._own_load = self._own_load * decay + own / 100 * (1 - decay)
        return system, own

    def measure(self) -> dict[str, Any]:
        """One reading of every metric (JSON-safe)."""
        cpus = psutil.cpu_count() or 1
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        memory = psutil.virtual_memory()
        system, own = self._cpu()
        own_share = min(100.0, own / cpus)  # of the whole machine, like the system figure
        other_load = max(0.0, load1 - self._own_load)
        return {
            "cpu_percent": system,
            "oblix_cpu_percent": round(own_share, 1),
            "other_cpu_percent": round(max(0.0, system - own_share), 1),
            "memory_percent": memory.percent,
            "memory_available_mb": round(memory.available / 2**20),
            "oblix_memory_mb": round(self._process.memory_info().rss / 2**20),
            "load_1m": round(load1, 2),
            "load_normalized": round(load1 * 4 / cpus, 2),
            "other_load_normalized": round(other_load * 4 / cpus, 2),
            "cpu_count": cpus,
            "gpu": read_gpus(),
        }

    def classify(self, metrics: dict[str, Any]) -> tuple[str, str]:
        """The raw state for one reading, and why (other programs' CPU and load, not Oblix's)."""
        t = self.thresholds
        gpu = metrics["gpu"]
        gpu_levels = [gpu["utilization"], gpu["memory_percent"]] if gpu.get("present") else []
        cpu = metrics.get("other_cpu_percent", metrics["cpu_percent"])
        load = metrics.get("other_load_normalized", metrics["load_normalized"])
        if cpu < t["cpu_threshold"] / 2:
            load = 0.0  # the load average lags: only with other programs busy now
        critical = [
            f"{label} {value:.0f}% >= {limit:.0f}%"
            for label, value, limit in (
                ("CPU (other programs)", cpu, t["critical_threshold"]),
                ("memory", metrics["memory_percent"], t["critical_threshold"]),
                *(("GPU", v, t["critical_gpu"]) for v in gpu_levels),
            )
            if value >= limit
        ]
        if critical:
            return AgentState.CRITICAL, "; ".join(critical) + _own(metrics)
        constrained = [
            f"{label} {value:g}{unit} >= {limit:g}{unit}"
            for label, value, limit, unit in (
                ("CPU (other programs)", cpu, t["cpu_threshold"], "%"),
                ("memory", metrics["memory_percent"], t["memory_threshold"], "%"),
                ("load (other programs)", load, t["load_threshold"], ""),
                *(("GPU", v, t["gpu_threshold"], "%") for v in gpu_levels),
            )
            if value >= limit
        ]
        if constrained:
            return AgentState.CONSTRAINED, "; ".join(constrained) + _own(metrics)
        return AgentState.AVAILABLE, (
            f"CPU {cpu:g}% by other programs, memory {metrics['memory_percent']:g}%, "
            f"load {load:g}"
            + (f", GPU {gpu['utilization']:g}%" if gpu.get("present") else "")
            + _own(metrics)
        )

    def sample(self) -> AgentCheck:
        metrics = self.measure()
        raw, reason = self.classify(metrics)
        self._recent.append(raw)
        if self._published is None or (len(self._recent) == self.smoothing and len(set(self._recent)) == 1):
            self._published = raw
        elif raw != self._published:
            reason = f"{reason} (raw {raw}; holding {self._published} until {self.smoothing} samples agree)"
        state = self._published
        if state == AgentState.AVAILABLE:
            target = Target.LOCAL_GPU if metrics["gpu"].get("present") else Target.LOCAL_CPU
        else:
            target = Target.CLOUD
        return AgentCheck(self.name, state, target, reason, metrics | {"raw_state": raw})


def _own(metrics: dict[str, Any]) -> str:
    own = metrics.get("oblix_cpu_percent")
    return f" (Oblix itself: CPU {own:g}%, not counted)" if own else ""
