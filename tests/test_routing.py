"""The default routing policy's rules, and replacing it through ``oblix_route``."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import pytest

from oblix_core import hookimpl
from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.errors import NoModelAvailableError
from oblix_core.models.backend import ChatMessage, GenerationRequest, ModelBackend, StreamChunk
from oblix_core.models.health import CircuitBreaker, ModelCoolingDownError
from oblix_core.request.routing import RouteRequest, RoutingPlan, default_policy, screen
from oblix_core.testing import ScriptedPlugin


class Inert(ModelBackend):
    """A backend that is never run: these tests only order candidates."""

    model_type = "inert"

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[StreamChunk, None]:  # pragma: no cover
        yield StreamChunk("")


LOCAL_A, LOCAL_B = Inert("local-a", local=True), Inert("local-b", local=True)
CLOUD = Inert("cloud", local=False)
ALL = [LOCAL_A, CLOUD, LOCAL_B]


def ids(plan: RoutingPlan) -> list[str]:
    return [m.model_name for m in plan.candidates]


def check(state: str, target: str | None = None, agent: str = "a") -> AgentCheck:
    return AgentCheck(agent, state, target, reason="because")


@pytest.mark.parametrize(
    ("checks", "preference", "rule", "order"),
    [
        ([], "local-first", "preference", ["local-a", "local-b", "cloud"]),
        ([], "cloud-first", "preference", ["cloud", "local-a", "local-b"]),
        ([check(AgentState.DISCONNECTED)], "cloud-first", "disconnected", ["local-a", "local-b"]),
        (
            [check(AgentState.CONSTRAINED, Target.CLOUD)],
            "local-first",
            "local-constrained",
            ["cloud", "local-a", "local-b"],
        ),
        ([check(AgentState.CRITICAL)], "local-first", "local-constrained", ["cloud", "local-a", "local-b"]),
        ([check(AgentState.DEGRADED)], "cloud-first", "network-degraded", ["local-a", "local-b", "cloud"]),
        (
            [check("PREFER_CLOUD", Target.CLOUD)],
            "local-first",
            "agent-target",
            ["cloud", "local-a", "local-b"],
        ),
        (
            [check("PRIVATE_HOURS", Target.LOCAL)],
            "cloud-first",
            "agent-target",
            ["local-a", "local-b", "cloud"],
        ),
        (
            [check(AgentState.AVAILABLE, Target.LOCAL_GPU)],
            "cloud-first",
            "preference",
            ["cloud", "local-a", "local-b"],
        ),
        ([check(AgentState.OPTIMAL)], "cloud-first", "preference", ["cloud", "local-a", "local-b"]),
        ([check(AgentState.PENDING)], "local-first", "preference", ["local-a", "local-b", "cloud"]),
        (
            [check(AgentState.CRITICAL, agent="res"), check(AgentState.DISCONNECTED, agent="net")],
            "local-first",
            "disconnected",
            ["local-a", "local-b"],
        ),
    ],
)
def test_rules(checks: list[AgentCheck], preference: str, rule: str, order: list[str]) -> None:
    plan = default_policy(RouteRequest(preference=preference), ALL, checks)
    assert plan.rule == rule and ids(plan) == order
    assert plan.reason and plan.decision()["candidates"] == [m.model_id for m in plan.candidates]


def test_local_only_never_includes_cloud() -> None:
    plan = default_policy(
        RouteRequest(local_only=True, local_only_reason="r"), ALL, [check(AgentState.CRITICAL)]
    )
    assert ids(plan) == ["local-a", "local-b"] and plan.rule == "local-only"
    with pytest.raises(NoModelAvailableError, match="nothing was sent"):
        default_policy(RouteRequest(local_only=True, local_only_reason="r"), [CLOUD], [])
    with pytest.raises(NoModelAvailableError, match="local-only"):
        default_policy(RouteRequest(local_only=True, model="inert:cloud"), ALL, [])


def test_explicit_model_and_subsets() -> None:
    assert ids(default_policy(RouteRequest(model="inert:cloud"), ALL, [])) == ["cloud"]
    with pytest.raises(NoModelAvailableError, match="not hooked"):
        default_policy(RouteRequest(model="inert:nope"), ALL, [])
    assert ids(default_policy(RouteRequest(), [CLOUD], [check(AgentState.DISCONNECTED)])) == ["cloud"]
    assert ids(default_policy(RouteRequest(), [LOCAL_A], [check(AgentState.CRITICAL)])) == ["local-a"]
    with pytest.raises(NoModelAvailableError):
        default_policy(RouteRequest(), [], [])


class FixedAgent(BaseAgent):
    """A custom agent whose verdict the test sets."""

    default_name = "fixed"

    def __init__(self, state: str, target: str | None = None) -> None:
        super().__init__(interval=60)
        self.state, self.target = state, target

    def sample(self) -> AgentCheck:
        return AgentCheck(self.name, self.state, self.target, reason="set by the test", metrics={"x": 1})


@pytest.mark.anyio
async def test_custom_agent_steers_execute(home: Path, scripted: ScriptedPlugin) -> None:
    client = OblixClient(home=home, plugins=[scripted])
    await client.hook_model("scripted", "local")
    await client.hook_model("scripted", "cloud", local=False)
    agent = FixedAgent("PREFER_CLOUD", Target.CLOUD)
    client.hook_agent(agent)
    agent.refresh()
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:cloud"
    assert result["routing_decision"]["rule"] == "agent-target"
    assert result["agent_checks"]["fixed"]["state"] == "PREFER_CLOUD"
    sid = await client.create_session(metadata={"local_only": True})
    result = await client.execute("private", session_id=sid, stream=False)
    assert result["model_id"] == "scripted:local" and result["routing_decision"]["rule"] == "local-only"
    assert (await client.execute("p", stream=False, local_only=True))["model_id"] == "scripted:local"
    await client.shutdown()


class AlwaysLast:
    """A routing plugin: reverses the hooked models."""

    @hookimpl
    def oblix_route(self, request: RouteRequest, models: Sequence[ModelBackend], checks: Any) -> RoutingPlan:
        return RoutingPlan(tuple(reversed(models)), "reverse", "plugin reverses the order", policy="test")


@pytest.mark.anyio
async def test_plugin_replaces_the_policy(home: Path, scripted: ScriptedPlugin) -> None:
    client = OblixClient(home=home, plugins=[scripted, AlwaysLast()])
    await client.hook_model("scripted", "first")
    await client.hook_model("scripted", "second")
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:second"
    assert result["routing_decision"]["policy"] == "test"
    await client.shutdown()


# -- model signals, screening, the decision's keys ----------------------------------------


class Signalled(Inert):
    """An Inert backend whose warming/busy signals the test sets."""

    def __init__(self, name: str, *, local: bool = True, warming: bool = False, depth: int = 0) -> None:
        super().__init__(name, local=local)
        self._warming, self.in_flight = warming, depth

    @property
    def warming(self) -> bool:
        return self._warming


def test_explicit_with_fallback_puts_the_others_after_it() -> None:
    plan = default_policy(RouteRequest(model="inert:cloud", fallback=True), ALL, [])
    assert ids(plan) == ["cloud", "local-a", "local-b"] and plan.rule == "explicit"
    private = default_policy(
        RouteRequest(model="inert:local-b", fallback=True, local_only=True, local_only_reason="r"), ALL, []
    )
    assert ids(private) == ["local-b", "local-a"]


def test_busy_and_warming_local_models_yield_to_ready_ones() -> None:
    busy, cloud = Signalled("busy", depth=1), Signalled("c", local=False)
    plan = default_policy(RouteRequest(), [busy, cloud], [])
    assert ids(plan) == ["c", "busy"] and plan.rule == "local-busy" and "1 request(s)" in plan.reason
    alone = default_policy(RouteRequest(), [busy], [])
    assert ids(alone) == ["busy"] and "queues for it" in alone.reason
    warming, idle = Signalled("warm", warming=True), Signalled("idle")
    plan = default_policy(RouteRequest(), [warming, idle, cloud], [])
    assert ids(plan) == ["idle", "c", "warm"] and plan.rule == "local-warming"
    wait = default_policy(RouteRequest(), [warming], [])
    assert ids(wait) == ["warm"] and "waits for it" in wait.reason
    forced = default_policy(RouteRequest(model="inert:busy"), [busy, cloud], [])
    assert ids(forced) == ["busy"] and forced.rule == "explicit"  # an explicit choice is kept


def _messages(prompt_words: int, history: int = 0) -> list[ChatMessage]:
    past = [ChatMessage("user" if i % 2 == 0 else "assistant", "old words " * 10) for i in range(history)]
    return [*past, ChatMessage("user", "word " * prompt_words)]


def test_screen_skips_small_windows_and_explains_every_model() -> None:
    small, big = Inert("small", context_window=64), Inert("big", context_window=4096)
    plan = default_policy(RouteRequest(local_only=True, local_only_reason="r"), [small, big, CLOUD], [])
    screened = screen(plan, [small, big, CLOUD], _messages(100, history=6), 32, CircuitBreaker(3, 30))
    assert ids(screened) == ["big"]
    decision = screened.decision()
    assert set(decision) == {"policy", "rule", "reason", "candidates", "models", "agents", "notes"}
    by_id = {m["model_id"]: m for m in decision["models"]}
    assert set(by_id["inert:big"]) == {
        "model_id",
        "local",
        "status",
        "position",
        "why",
        "context",
        "health",
        "load",
    }
    assert by_id["inert:small"]["status"] == "skipped" and "context window" in by_id["inert:small"]["why"]
    assert by_id["inert:cloud"]["status"] == "excluded" and by_id["inert:big"]["position"] == 1
    assert by_id["inert:big"]["context"]["history_sent"] == 6 and by_id["inert:big"]["context"]["fits"]
    json.dumps(decision, allow_nan=False)
    with pytest.raises(NoModelAvailableError, match="No candidate can hold"):
        screen(plan, [small], _messages(5000), 32, CircuitBreaker(3, 30))


def test_screen_skips_cooling_models_but_keeps_a_last_resort() -> None:
    breaker = CircuitBreaker(3, 30)
    breaker.watch(ALL)
    breaker.record_failure("inert:local-a", at_once=True, error="refused")
    plan = default_policy(RouteRequest(), ALL, [])
    screened = screen(plan, ALL, _messages(3), None, breaker)
    assert ids(screened) == ["local-b", "cloud"]
    skipped = next(m for m in screened.models if m["model_id"] == "inert:local-a")
    assert skipped["status"] == "skipped" and "refused" in skipped["why"] and skipped["health"]["cooling"]
    for model in ("inert:local-b", "inert:cloud"):
        breaker.record_failure(model, at_once=True)
    last = screen(plan, ALL, _messages(3), None, breaker)
    assert ids(last) == ["local-a", "local-b", "cloud"] and "every candidate is cooling down" in last.notes[0]
    forced = default_policy(RouteRequest(model="inert:cloud"), ALL, [])
    with pytest.raises(ModelCoolingDownError, match="inert:cloud is cooling down"):
        screen(forced, ALL, _messages(3), None, breaker, forced="inert:cloud")
