"""routing.default_policy keeps its plan while nothing it reads changes, and makes a new one
exactly when something does: a model's queue, the agents' checks, the model set, the request."""

from __future__ import annotations

import pytest

from oblix_core.agents import AgentCheck, AgentState
from oblix_core.request.routing import RouteRequest, default_policy
from oblix_core.testing.scripted import ScriptedBackend

pytestmark = pytest.mark.anyio


def _models() -> tuple[ScriptedBackend, ScriptedBackend]:
    return ScriptedBackend("local", local=True), ScriptedBackend("cloud", local=False)


async def test_the_same_inputs_give_the_same_plan() -> None:
    local, cloud = _models()
    checks = [AgentCheck("resources", AgentState.AVAILABLE)]
    first = default_policy(RouteRequest(), [local, cloud], checks)
    assert default_policy(RouteRequest(), [local, cloud], list(checks)) is first
    assert first.rule == "preference" and first.candidates == (local, cloud)


async def test_a_busy_local_model_changes_the_plan_and_its_end_changes_it_back() -> None:
    local, cloud = _models()
    idle = default_policy(RouteRequest(), [local, cloud], [])
    local.in_flight += 1  # a request is running on it
    busy = default_policy(RouteRequest(), [local, cloud], [])
    assert busy.rule == "local-busy" and busy.candidates == (cloud, local)
    local.in_flight -= 1
    assert default_policy(RouteRequest(), [local, cloud], []) is idle


async def test_a_new_check_a_new_model_set_or_another_request_makes_a_new_plan() -> None:
    local, cloud = _models()
    fine = [AgentCheck("network", AgentState.AVAILABLE)]
    default_policy(RouteRequest(), [local, cloud], fine)
    down = [AgentCheck("network", AgentState.DISCONNECTED, reason="no route")]
    assert default_policy(RouteRequest(), [local, cloud], down).rule == "disconnected"
    assert default_policy(RouteRequest(), [cloud], fine).candidates == (cloud,)
    other = ScriptedBackend("local", local=True)  # equal in every way but not the same object
    assert default_policy(RouteRequest(), [other, cloud], fine).candidates[0] is other
    assert default_policy(RouteRequest(preference="cloud-first"), [local, cloud], fine).candidates[0] is cloud
    forced = default_policy(RouteRequest(model=cloud.model_id, fallback=True), [local, cloud], fine)
    assert forced.rule == "explicit" and forced.candidates == (cloud, local)
