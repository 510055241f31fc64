"""The contract every :class:`~oblix_core.agents.BaseAgent` must satisfy."""

from __future__ import annotations

import json
import math
import threading

import pytest

from oblix_core.agents import AgentCheck, BaseAgent


class AgentContract:
    """Subclass and provide an ``agent`` fixture returning a fresh (not started) agent.

    The suite takes samples in the test's thread and in the agent's own background
    thread, so a ``sample()`` that needs a network or a sensor should be pointed at one
    the test controls.
    """

    @pytest.fixture
    def agent(self) -> BaseAgent:  # pragma: no cover - always overridden
        raise NotImplementedError("provide an `agent` fixture")

    def test_sample_returns_a_check_of_its_own(self, agent: BaseAgent) -> None:
        check = agent.sample()
        assert isinstance(check, AgentCheck)
        assert check.agent == agent.name and isinstance(check.state, str) and check.state
        assert check.target is None or isinstance(check.target, str)

    def test_metrics_are_json_safe(self, agent: BaseAgent) -> None:
        metrics = agent.sample().metrics
        json.dumps(metrics, allow_nan=False)  # raises on NaN/infinity or a value JSON cannot hold
        assert all(isinstance(k, str) for k in metrics)
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())

    def test_samples_in_the_background_and_stops(self, agent: BaseAgent) -> None:
        before = set(threading.enumerate())  # other agents of the process may share the name
        agent.start()
        try:
            first = agent.wait_first(timeout=30)
            assert first.agent == agent.name and first.state != "PENDING"
            assert agent.latest() is not None
        finally:
            agent.stop(timeout=30)
        started = set(threading.enumerate()) - before
        assert not any(t.name == f"oblix-agent-{agent.name}" for t in started)

    def test_samples_from_several_threads_at_once(self, agent: BaseAgent) -> None:
        checks: list[AgentCheck] = []
        threads = [threading.Thread(target=lambda: checks.append(agent.refresh())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(checks) == 4 and all(c.agent == agent.name for c in checks)
