"""The default routing policy's rules, and replacing it through ``oblix_route``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import pytest

from oblix_core import hookimpl
from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.errors import NoModelAvailableError
from oblix_core.models import GenerationRequest, ModelBackend, StreamChunk
from oblix_core.routing import RouteRequest, RoutingPlan, default_policy
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
