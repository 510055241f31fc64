"""Monitoring agents: the base class and the check record they publish.

An agent measures something (machine resources, network) in its own background
thread every ``interval`` seconds and caches the verdict. The request path only reads
the cached :class:`AgentCheck` (:meth:`BaseAgent.latest`), so it never waits on a probe.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from oblix_core.errors import ConfigError

if TYPE_CHECKING:
    from oblix_core.models import ModelBackend

log = logging.getLogger(__name__)


class AgentState:
    """State names used by the built-in agents and the default routing policy."""

    PENDING = "PENDING"  # no sample taken yet
    IDLE = "IDLE"  # nothing to watch (e.g. no cloud endpoint)
    ERROR = "ERROR"  # the agent itself failed to measure
    AVAILABLE = "AVAILABLE"
    CONSTRAINED = "CONSTRAINED"
    CRITICAL = "CRITICAL"
    OPTIMAL = "OPTIMAL"
    DEGRADED = "DEGRADED"
    DISCONNECTED = "DISCONNECTED"


#: States that say "all is well": a target on such a check informs but does not steer routing.
NOMINAL_STATES = frozenset({"PENDING", "IDLE", "ERROR", "AVAILABLE", "OPTIMAL"})


class Target:
    """Where an agent suggests the request should run."""

    LOCAL_GPU = "LOCAL_GPU"
    LOCAL_CPU = "LOCAL_CPU"
    LOCAL = "LOCAL"
    CLOUD = "CLOUD"


@attrs.frozen
class AgentCheck:
    """One verdict of an agent. ``metrics`` must be JSON-safe (no ``inf``/``NaN``)."""

    agent: str
    state: str
    target: str | None = None
    reason: str = ""
    metrics: dict[str, Any] = attrs.field(factory=dict)
    checked_at: float = attrs.field(factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "state": self.state,
            "target": self.target,
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "checked_at": self.checked_at,
        }


class BaseAgent(abc.ABC):
    """Base class of monitoring agents; subclass it and implement :meth:`sample`."""

    #: Default name (the class name in snake case is a good choice).
    default_name: str = "agent"

    def __init__(self, name: str | None = None, interval: float = 5.0) -> None:
        if interval <= 0:
            raise ConfigError(f"Agent interval must be positive, got {interval!r}.")
        self.name = name or self.default_name
        self.interval = float(interval)
        self._latest = AgentCheck(self.name, AgentState.PENDING, reason="no sample taken yet")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._models: tuple[ModelBackend, ...] = ()

    @abc.abstractmethod
    def sample(self) -> AgentCheck:
        """Measure now (may block) and return a verdict. Runs in the agent's thread."""

    def latest(self) -> AgentCheck:
        """The most recent verdict; cheap, never blocks."""
        return self._latest

    def refresh(self) -> AgentCheck:
        """Take a sample now, in the calling thread, and publish it."""
        try:
            check = self.sample()
        except Exception as exc:  # an agent failing must not break routing
            log.warning("agent %s failed to sample: %s", self.name, exc)
            check = AgentCheck(self.name, AgentState.ERROR, reason=f"sampling failed: {exc}")
        self._latest = check
        return check

    def set_models(self, models: Sequence[ModelBackend]) -> None:
        """Told by the client whenever the hooked models change."""
        self._models = tuple(models)
        self._wake.set()

    @property
    def models(self) -> tuple[ModelBackend, ...]:
        return self._models

    def start(self) -> None:
        """Start background sampling (idempotent)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"oblix-agent-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop background sampling and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} state={self._latest.state}>"
