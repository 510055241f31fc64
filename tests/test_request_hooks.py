"""oblix_core.request.hooks and routing.route: the request path skips pluggy's dispatch for hooks
nobody implements (and for routing when only the core's policy routes), and sees a plugin
registered later from its next request on (a real pluggy plugin manager)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from oblix_core import hookimpl
from oblix_core.client import OblixClient
from oblix_core.errors import NoModelAvailableError, PluginError
from oblix_core.models.backend import ChatMessage
from oblix_core.plugins import hookspecs
from oblix_core.request import routing
from oblix_core.request.context import Request
from oblix_core.request.hooks import RequestHooks, request_hooks
from oblix_core.request.routing import RouteRequest, RoutingPlan
from oblix_core.testing import ScriptedPlugin
from oblix_core.testing.scripted import ScriptedBackend


class Redactor:
    """A middleware plugin: redacts a secret before any model sees it, counts the answers."""

    def __init__(self) -> None:
        self.ended = 0

    @hookimpl
    def oblix_request_start(self, request: Request) -> None:
        request.messages = [
            ChatMessage(m.role, m.content.replace("sk-secret", "[gone]")) for m in request.messages
        ]

    @hookimpl
    def oblix_request_end(self, request: Request, result: dict[str, Any]) -> None:
        self.ended += 1


def _manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("oblix")
    manager.add_hookspecs(hookspecs)
    return manager


def test_an_unimplemented_hook_returns_what_pluggy_returns() -> None:
    manager = _manager()
    hooks = RequestHooks(manager.hook)
    request = Request(messages=[ChatMessage("user", "hi")], prompt="hi")
    assert (
        hooks.oblix_request_start(request=request) == manager.hook.oblix_request_start(request=request) == []
    )
    route = hooks.oblix_route(request=None, models=[], checks=[])  # firstresult: None
    assert route is None and manager.hook.oblix_route(request=None, models=[], checks=[]) is None
    assert (
        hooks.oblix_request_end.get_hookimpls() == [] and hooks.oblix_request_end.name == "oblix_request_end"
    )


def test_a_plugin_registered_later_is_called_and_unknown_hooks_fail() -> None:
    manager = _manager()
    hooks = request_hooks(manager.hook)
    assert request_hooks(hooks) is hooks
    request = Request(messages=[ChatMessage("user", "my sk-secret")], prompt="my sk-secret")
    hooks.oblix_request_start(request=request)
    assert request.messages[0].content == "my sk-secret"
    manager.register(Redactor())
    assert hooks.oblix_request_start(request=request) == []
    assert request.messages[0].content == "my [gone]"
    assert [i.plugin_name for i in hooks.oblix_request_start.get_hookimpls()] != []
    with pytest.raises(AttributeError):
        hooks.oblix_no_such_hook  # noqa: B018


@pytest.mark.anyio
async def test_a_client_sees_a_middleware_registered_between_requests(
    home: Any, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    client = make_client(home=home, plugins=[scripted])  # ScriptedPlugin: the test double backend
    await client.hook_model("scripted", "a")
    first = await client.execute("my key is sk-secret", stream=False)
    assert first["response"] == "echo: my key is sk-secret"
    redactor = Redactor()
    client.plugin_manager.register(redactor)
    second = await client.execute("my key is sk-secret", stream=False)
    assert second["response"] == "echo: my key is [gone]"
    assert redactor.ended == 1


class CloudFirst:
    """A routing plugin: the cloud model first, whatever the agents say."""

    @hookimpl
    def oblix_route(self, request: Any, models: Any, checks: Any) -> RoutingPlan:
        ordered = sorted(models, key=lambda m: m.is_local)
        return RoutingPlan(tuple(ordered), "plugin", "cloud first, by plugin", policy="cloud-first-plugin")


@pytest.mark.anyio
async def test_route_calls_the_core_policy_alone_and_a_plugins_policy_through_pluggy() -> None:
    manager = _manager()
    manager.register(routing, name="core-routing")
    local, cloud = ScriptedBackend("l", local=True), ScriptedBackend("c", local=False)
    request = RouteRequest()
    plan = routing.route(manager.hook.oblix_route, request, [local, cloud], [])
    assert plan == routing.default_policy(request, [local, cloud], [])
    assert plan.candidates[0] is local
    manager.register(CloudFirst())
    plan = routing.route(manager.hook.oblix_route, request, [local, cloud], [])
    assert plan.policy == "cloud-first-plugin" and plan.candidates[0] is cloud


class BrokenRouter:
    """A routing plugin with a bug in it."""

    @hookimpl
    def oblix_route(self, request: Any, models: Any, checks: Any) -> Any:
        return models[5]  # IndexError with two models


class BrokenMiddleware:
    @hookimpl
    def oblix_request_start(self, request: Request) -> None:
        raise ValueError("cannot redact this")


class RefusingRouter:
    """A routing plugin that refuses on purpose, with Oblix's own error."""

    @hookimpl
    def oblix_route(self, request: Any, models: Any, checks: Any) -> Any:
        raise NoModelAvailableError("policy: no model may answer this team")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("plugin", "hook", "raised"),
    [
        (BrokenRouter(), "oblix_route", "IndexError"),
        (BrokenMiddleware(), "oblix_request_start", "ValueError: cannot redact this"),
    ],
)
async def test_a_request_hook_that_raises_names_its_plugin(
    home: Any, plugin: object, hook: str, raised: str
) -> None:
    scripted = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[scripted, plugin]) as client:
        await client.hook_model("scripted", "local")
        await client.hook_model("scripted", "other")
        with pytest.raises(
            PluginError, match=f"Plugin '.*{type(plugin).__name__}.*' failed in {hook}: {raised}"
        ) as info:
            await client.execute("hi", stream=False)
        assert "OBLIX_DISABLE_PLUGINS=" in str(info.value)
        assert not scripted.calls["local"] and not scripted.calls["other"]  # nothing was sent


@pytest.mark.anyio
async def test_a_routing_plugins_own_oblix_error_passes_as_it_is(home: Any) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin(), RefusingRouter()]) as client:
        await client.hook_model("scripted", "local")
        with pytest.raises(NoModelAvailableError, match="policy: no model may answer this team"):
            await client.execute("hi", stream=False)
