"""Monitoring agents: the base class and the check record they publish.

An agent measures something (machine resources, network) in its own background
thread every ``interval`` seconds and caches the verdict. The request path reads the
cached :class:`AgentCheck` (:meth:`BaseAgent.latest`), so it never waits on a probe,
with one bounded exception (:func:`current_checks`): an agent that has not published a
first sample yet (a one-shot command, a client's first request) is waited for up to
:data:`FRESH_SAMPLE_BUDGET` seconds; if it is still pending, its persisted reading is
used when younger than :data:`PERSISTED_MAX_AGE`, else the decision says that the
agent had no reading.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from oblix_core.errors import ConfigError

if TYPE_CHECKING:
    from oblix_core.models.backend import ModelBackend

log = logging.getLogger(__name__)

#: Seconds a request waits, at most, for agents' first samples.
FRESH_SAMPLE_BUDGET = 0.3
#: Age in seconds up to which a persisted reading stands in for a pending agent.
PERSISTED_MAX_AGE = 60.0
#: Seconds between two saves of the agents' readings.
SAVE_INTERVAL = 10.0


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

    @classmethod
    def from_dict(cls, data: Any) -> AgentCheck | None:
        """A check read back from a file; ``None`` if ``data`` is not one."""
        try:
            return cls(
                str(data["agent"]),
                str(data["state"]),
                data.get("target"),
                str(data.get("reason", "")),
                dict(data.get("metrics") or {}),
                float(data["checked_at"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class AgentStopped(Exception):
    """Raised by :meth:`BaseAgent.pause` when the agent is stopped while a later sample waits:
    that sample is abandoned (nothing is published) and :meth:`BaseAgent.stop` returns at once."""


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
        self._sampled = threading.Event()  # set once a first sample is published
        self._sample_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._savers: list[threading.Thread] = []  # saving a first sample for later commands
        self._models: tuple[ModelBackend, ...] = ()

    @abc.abstractmethod
    def sample(self) -> AgentCheck:
        """Measure now (may block) and return a verdict. Runs in the agent's thread."""

    def latest(self) -> AgentCheck:
        """The most recent verdict; cheap, never blocks."""
        return self._latest

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` within :meth:`sample` (e.g. to measure over a span). Stopping the
        agent meanwhile abandons a later sample at once (:class:`AgentStopped`: nothing is
        published, :meth:`stop` does not wait for it); a first sample still waits its span, so
        that a one-shot command can save it for the next one."""
        if seconds <= 0:
            return
        if not self._sampled.is_set():
            time.sleep(seconds)
        elif self._stop.wait(seconds):
            raise AgentStopped(f"agent {self.name} stopped during a sample")

    def refresh(self) -> AgentCheck:
        """Take a sample now, in the calling thread, and publish it."""
        with self._sample_lock:  # the agent's thread and a request may both ask
            try:
                check = self.sample()
            except AgentStopped:  # stopped during a later sample: the last check stands
                return self._latest
            except Exception as exc:  # an agent failing must not break routing
                log.warning("agent %s failed to sample: %s", self.name, exc)
                check = AgentCheck(self.name, AgentState.ERROR, reason=f"sampling failed: {exc}")
            self._latest = check
        self._sampled.set()
        return check

    def wait_first(self, timeout: float) -> AgentCheck:
        """The first sample, waiting up to ``timeout`` seconds for it (sampling here if not started)."""
        if not self._sampled.is_set():
            if self._thread is not None and self._thread.is_alive():
                self._sampled.wait(timeout)
            else:
                self.refresh()
        return self._latest

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
        self._wake.clear()  # the first sample sees the models told so far: no second one at once
        self._thread = threading.Thread(target=self._run, name=f"oblix-agent-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop background sampling and wait (``timeout`` seconds in all) for the thread and
        for the saving of a first sample a request could not wait for."""
        self._stop.set()
        self._wake.set()
        end = time.monotonic() + timeout
        if self._thread:
            self._thread.join(timeout)
            self._thread = None
        for saver in self._savers:
            saver.join(max(0.0, end - time.monotonic()))
        self._savers = [saver for saver in self._savers if saver.is_alive()]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} state={self._latest.state}>"


async def current_checks(
    agents: Sequence[BaseAgent], readings: Any = None
) -> tuple[list[AgentCheck], list[dict[str, Any]]]:
    """The agents' checks for routing a request, and where each came from.

    ``source`` is ``"background"`` (the agent's cached check), ``"fresh"`` (a first
    sample waited for, within :data:`FRESH_SAMPLE_BUDGET` in all), ``"persisted"`` (the
    last reading saved in ``readings``, a :class:`~oblix_core.models.health.JsonFile`, younger
    than :data:`PERSISTED_MAX_AGE`) or ``"none"`` (still ``PENDING``: routed without it).
    """
    deadline = None  # set when the first agent is found pending (the usual request has none)
    checks: list[AgentCheck] = []
    sources: list[str] = []
    for agent in agents:
        check, source = agent.latest(), "background"
        if check.state == AgentState.PENDING:
            deadline = deadline or time.monotonic() + FRESH_SAMPLE_BUDGET
            left = max(0.0, deadline - time.monotonic())
            with anyio.move_on_after(left):
                check = await anyio.to_thread.run_sync(agent.wait_first, left, abandon_on_cancel=True)
            check = agent.latest()
            source = "fresh" if check.state != AgentState.PENDING else "none"
        checks.append(check)
        sources.append(source)
    if readings is not None and "none" in sources:
        for agent, source in zip(agents, sources, strict=True):
            if source == "none":
                _save_when_sampled(agent, readings)
    stale = readings is not None and time.monotonic() - readings.last_write >= SAVE_INTERVAL
    if readings is not None and (stale or "none" in sources or "fresh" in sources):
        checks, sources = await anyio.to_thread.run_sync(_persisted, readings, checks, sources)
    now = time.time()
    notes = [
        {
            "agent": c.agent,
            "state": c.state,
            "target": c.target,
            "reason": c.reason,
            "source": s,
            "age_s": round(max(0.0, now - c.checked_at), 1) if s != "none" else None,
        }
        for c, s in zip(checks, sources, strict=True)
    ]
    return checks, notes


def _save_when_sampled(agent: BaseAgent, readings: Any) -> None:
    """Save ``agent``'s first reading when it comes, for the next one-shot command."""

    def wait_and_save() -> None:
        check = agent.wait_first(PERSISTED_MAX_AGE)
        if check.state != AgentState.PENDING:
            try:
                readings.update({check.agent: check.to_dict()})
            except Exception as exc:
                log.warning("cannot save the reading of agent %s: %s", agent.name, exc)

    saver = threading.Thread(target=wait_and_save, name=f"oblix-save-{agent.name}", daemon=True)
    agent._savers.append(saver)  # joined by stop(): a one-shot command saves it before exiting
    saver.start()


def _persisted(
    readings: Any, checks: list[AgentCheck], sources: list[str]
) -> tuple[list[AgentCheck], list[str]]:
    """Pending checks replaced by recent persisted readings; fresh readings saved (throttled)."""
    try:
        saved = readings.read()
    except Exception as exc:
        log.warning("cannot read the agents' saved readings: %s", exc)
        return checks, sources
    now = time.time()
    for i, check in enumerate(checks):
        if sources[i] != "none":
            continue
        old = AgentCheck.from_dict(saved.get(check.agent))
        if old is not None and old.state != AgentState.PENDING and now - old.checked_at <= PERSISTED_MAX_AGE:
            checks[i], sources[i] = old, "persisted"
    pairs = zip(checks, sources, strict=True)
    live = {c.agent: c.to_dict() for c, s in pairs if s in ("fresh", "background")}
    saved_at = float(saved.get("_saved_at", 0) or 0)
    if live and ("fresh" in sources or now - saved_at >= SAVE_INTERVAL):
        try:
            readings.update(live | {"_saved_at": now})
        except Exception as exc:
            log.warning("cannot save the agents' readings: %s", exc)
    elif live:  # another process saved them a moment ago: check again in SAVE_INTERVAL
        readings.last_write = time.monotonic() - (now - saved_at)
    return checks, sources
