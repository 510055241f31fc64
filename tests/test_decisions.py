"""Each decision of the request path has one home that every path uses (issue 27 item 2).

The decisions: is this request local-only (:func:`oblix_core.request.privacy.decide`), does
the history fit a model (:func:`oblix_core.request.history.fit_to_window`, counted once per
plan and carried to the executor), is a budget spent (:meth:`BudgetGuard.decide`, one read of
the ledger per request), and is a model cooling down (routing's screen, asked of the executor;
the conversation never reaches into its breaker).

Each test drives the faces -- the SDK (``OblixClient.execute``, and 0.1.2's ``chat_once``),
the command line (``oblix run`` and ``oblix chat``, in this process through click's runner,
its plugin found by a real entry point) and ``oblix server`` (its ASGI app, in this process,
called by the official openai client) -- with a spy on the one function: :func:`spy` wraps it
wherever a module bound it (``from ... import`` included), so a path that decided elsewhere
shows up as a missing call or as an answer the spy did not give. The models are the scripted
test double (no model is needed to make these decisions); the store, config, routing, CLI and
server are the real ones.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from click.testing import CliRunner

from oblix_core.cli.main import build_cli
from oblix_core.client import OblixClient
from oblix_core.models.backend import ModelBackend
from oblix_core.models.health import CircuitBreaker
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request import budgets, history, privacy, routing
from oblix_core.testing import ScriptedPlugin, Step
from oblix_core.testing.scripted import ScriptedBackend
from tests.conftest import FAST

with contextlib.suppress(ImportError):  # without the [server] extra the server path is skipped
    import oblix_server.app  # noqa: F401  # loaded before any spy: spy() sees (and restores) its bindings

ROOT = Path(__file__).resolve().parent.parent
LOCAL, CLOUD = "counted:local", "counted:cloud"


class CountedPlugin(ScriptedPlugin):
    """The scripted test double under the model type ``counted``, counting tokens its own way (a
    word a token), so that its counts have no tokenizer key: nothing is shared or cached between
    fits, and a second fit of the same request is a second call."""

    def __init__(self) -> None:
        super().__init__(model_type="counted")

    @hookimpl
    def oblix_register_models(self, register: Callable[[str, type[ModelBackend]], None]) -> None:
        plugin = self

        class Counted(ScriptedBackend):
            model_type = "counted"
            owner = plugin

            def count_tokens(self, text: str) -> int:
                return len(text.split())

        register("counted", Counted)


#: The plugin of every path (the CLI finds this same object through its entry point).
PLUGIN = CountedPlugin()

CONFIG = """
[routing]
preference = "cloud-first"

[agents]  # the CLI's client: no connectivity probe of the cloud model's (unused) endpoint
enabled = ["resource_monitor"]

[[models]]
type = "counted"
name = "local"

[[models]]
type = "counted"
name = "cloud"
local = false
endpoint = "http://127.0.0.1:9/v1"  # never called: it makes the model's health shared (health.json)
"""


@attrs.define
class Spy:
    """Calls of one function, wherever it is bound: arguments and results, in order."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = attrs.field(factory=list)
    results: list[Any] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.calls)


def spy(monkeypatch: pytest.MonkeyPatch, function: Any, answer: Callable[..., Any] | None = None) -> Spy:
    """Replace ``function`` in every loaded module that holds it (under any name) with a recorder;
    ``answer``, if given, answers in its place. Returns the :class:`Spy`."""
    record = Spy()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record.calls.append((args, kwargs))
        result = (answer or function)(*args, **kwargs)
        record.results.append(result)
        return result

    holders = 0
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith(("oblix", "tests")):
            continue
        for name, value in list(vars(module).items()):
            if value is function:
                monkeypatch.setattr(module, name, wrapper)
                holders += 1
    assert holders, f"{function.__qualname__} is bound nowhere"
    return record


# -- the paths ------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An entry point naming :data:`PLUGIN`, as pip would install it (a ``.dist-info`` folder)."""
    folder = tmp_path_factory.mktemp("decisions-site")
    info = folder / "oblix_decisions_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oblix-decisions-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[oblix]\ndecisions = {__name__}:PLUGIN\n")
    monkeypatch.syspath_prepend(str(folder))
    return folder


async def _client(home: Path, extra: str = "") -> OblixClient:
    """A client on ``home`` (file store) whose config.toml (the CLI's too) is :data:`CONFIG`
    plus ``extra``, with the configured ``counted`` models hooked."""
    (home / "config.toml").write_text(CONFIG + extra)
    oblix = OblixClient(home=home, plugins=[PLUGIN], execution=FAST)
    await oblix.hook_configured_models()
    return oblix


@pytest.fixture
async def client(home: Path) -> AsyncIterator[OblixClient]:
    oblix = await _client(home)
    yield oblix
    await oblix.shutdown()


#: One face of Oblix: ``face(client, prompt, session_id, **options)`` -> model_id and decision.
Face = Callable[..., Any]


async def via_sdk(client: OblixClient, prompt: str, session_id: str, **options: Any) -> dict[str, Any]:
    result = await client.execute(prompt, session_id=session_id, stream=False, **options)
    return {"model_id": result["model_id"], "decision": result["routing_decision"]}


async def via_compat(client: OblixClient, prompt: str, session_id: str, **options: Any) -> dict[str, Any]:
    """Oblix 0.1.2's name for one answer: ``chat_once`` (no routing options)."""
    assert not options
    result = await client.chat_once(prompt, session_id)
    return {"model_id": result["model_id"], "decision": result["routing_decision"]}


async def via_cli(client: OblixClient, prompt: str, session_id: str, **options: Any) -> dict[str, Any]:
    args = ["run", "--json", "--session", session_id]
    if options.get("local_only"):
        args.append("--local-only")
    if options.get("model"):
        args += ["-m", options["model"]]
    # in a worker thread: the command runs its own event loop, as it does from a shell
    done = await anyio.to_thread.run_sync(CliRunner().invoke, build_cli(), [*args, prompt])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    return {"model_id": result["model_id"], "decision": result["routing_decision"]}


async def via_chat(client: OblixClient, prompt: str, session_id: str, **options: Any) -> dict[str, Any]:
    """``oblix chat --session ID``, one line typed (stdin), then end of input."""
    args = ["chat", "--session", session_id, *(["-m", options["model"]] if options.get("model") else [])]
    done = await anyio.to_thread.run_sync(CliRunner().invoke, build_cli(), args, f"{prompt}\n")
    assert done.exit_code == 0, done.output
    answered = [
        m
        for m in (LOCAL, CLOUD)
        if any(r.messages[-1].content == prompt for r in PLUGIN.calls[m.split(":")[1]])
    ]
    assert len(answered) == 1, done.output
    return {"model_id": answered[0], "decision": None}


async def via_server(client: OblixClient, prompt: str, session_id: str, **options: Any) -> dict[str, Any]:
    openai = pytest.importorskip("openai")
    from oblix_server.app import create_app
    from oblix_server.settings import ServerSettings

    app = create_app(client, ServerSettings())
    transport = httpx.ASGITransport(app=app)
    headers = {"X-Oblix-Session-Id": session_id}
    if options.get("local_only"):
        headers["X-Oblix-Local-Only"] = "true"
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        api = openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1/v1", http_client=http)
        answer = await api.chat.completions.create(
            model=options.get("model") or "auto",
            messages=[{"role": "user", "content": prompt}],
            extra_headers=headers,
        )
    return {"model_id": answer.model, "decision": None}


PATHS = {"sdk": via_sdk, "compat": via_compat, "cli": via_cli, "chat": via_chat, "server": via_server}


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest, site: Path) -> Face:
    return PATHS[request.param]


# -- local-only -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_path_asks_privacy_decide_whether_a_request_is_local_only(
    client: OblixClient, path: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spy answers "local-only" for a request that neither asks nor sits in a local-only
    session: a path that decided on its own would let the cloud-first preference send it to
    the cloud."""
    sid = await client.create_session(title="public", metadata={"group": "ordinary"})
    decided = spy(monkeypatch, privacy.decide, lambda *a, **k: privacy.LocalOnly(True, "the spy said so"))
    result = await path(client, "hello", sid)
    assert result["model_id"] == LOCAL
    assert len(decided) >= 1
    for (requested, metadata), kwargs in decided.calls:
        assert requested is False and metadata == {"group": "ordinary"} and kwargs["session_id"] == sid
    if result["decision"] is not None:
        assert result["decision"]["local_only"] == {"active": True, "reason": "the spy said so"}
    assert client.get_session_metadata(sid)["local_only"] is True  # marked before any model ran


@pytest.mark.anyio
async def test_the_server_refuses_a_forced_cloud_model_by_the_same_decision(
    client: OblixClient, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's check before anything is sent asks the same function (its answer is the spy's)."""
    openai = pytest.importorskip("openai")
    sid = await client.create_session(title="public")
    decided = spy(monkeypatch, privacy.decide, lambda *a, **k: privacy.LocalOnly(True, "the spy said so"))
    with pytest.raises(openai.UnprocessableEntityError, match="local-only"):
        await via_server(client, "hello", sid, model=CLOUD)
    assert len(decided) == 1 and not PLUGIN.calls["cloud"]


@pytest.mark.anyio
async def test_decide_gives_each_reason_and_takes_further_sources() -> None:
    assert privacy.decide(False) == (False, "")
    assert privacy.decide(True) == (True, privacy.REQUESTED)
    assert privacy.decide(True, reason="a middleware's reason") == (True, "a middleware's reason")
    active, reason = privacy.decide(False, {"local_only": "yes"}, session_id="s1")
    assert active and reason.startswith("session s1 is local-only (metadata local_only='yes'")
    assert privacy.decide(False, {"local_only": False}) == (False, "")
    workspace = "it draws on the private document workspace 'contracts'"
    assert privacy.decide(False, {}, sources=[workspace]) == (True, workspace)
    assert privacy.decide(True, sources=[workspace]) == (True, privacy.REQUESTED)


# -- fit ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_path_fits_the_history_once_per_plan_and_sends_that_fit(
    client: OblixClient, path: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await client.create_session(title="long", metadata={"local_only": True})
    await client.execute("an earlier question " * 20, session_id=sid, stream=False)
    fits = spy(monkeypatch, history.fit_to_window)
    await path(client, "and now?", sid)
    assert len(fits) == 1, "the history was fitted to the local model more than once"
    (messages, model, _max_tokens), _ = fits.calls[0]
    assert model.model_id == LOCAL and messages[-1].content == "and now?"
    sent = PLUGIN.calls["local"][-1].messages
    assert tuple(sent) == fits.results[0].messages  # the executor sent the plan's fit


@pytest.mark.anyio
async def test_a_model_that_changed_since_the_plan_is_fitted_again(
    client: OblixClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one exception: the window shrank between planning and sending (here: before the
    executor prepares the model, as loading weights or a server's refusal can)."""
    sid = await client.create_session(title="shrinking", metadata={"local_only": True})
    local = client.find_model(LOCAL)
    assert local is not None
    prepare = local.prepare

    async def shrink() -> None:
        await prepare()
        local.learned_context_window = 1024

    local.prepare = shrink  # type: ignore[method-assign]
    fits = spy(monkeypatch, history.fit_to_window)
    try:
        await client.execute("hello", session_id=sid, stream=False)
    finally:
        local.learned_context_window = None
    assert [call[0][1].model_id for call in fits.calls] == [LOCAL, LOCAL]
    assert fits.results[0].window == 4096 and fits.results[1].window == 1024


# -- budgets --------------------------------------------------------------------------------


@pytest.fixture
async def budgeted(home: Path) -> AsyncIterator[OblixClient]:
    oblix = await _client(home, "\n[budgets]\ndaily_usd = 1000\n")
    yield oblix
    await oblix.shutdown()


@pytest.mark.anyio
async def test_every_path_reads_the_budgets_once_per_request(
    budgeted: OblixClient, path: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await budgeted.create_session(title="budgeted")
    reads = spy(monkeypatch, budgets.spent_budget)
    result = await path(budgeted, "hello", sid)
    assert result["model_id"] == CLOUD and len(reads) == 1  # screened and admitted by one read


@pytest.mark.anyio
async def test_a_local_first_request_reads_budgets_only_if_it_reaches_a_cloud_model(
    budgeted: OblixClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await budgeted.create_session(title="local first")
    reads = spy(monkeypatch, budgets.spent_budget)
    answered = await budgeted.execute("hi", session_id=sid, stream=False, preference="local-first")
    assert answered["model_id"] == LOCAL and len(reads) == 0
    PLUGIN.scripts["local"] = [Step(fail="permanent")]
    fell_back = await budgeted.execute("hi", session_id=sid, stream=False, preference="local-first")
    assert fell_back["model_id"] == CLOUD and len(reads) == 1


@pytest.mark.anyio
async def test_a_spent_budget_decided_once_routes_locally_and_says_so(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await _client(home, "\n[budgets]\ndaily_usd = 0\n") as oblix:
        reads = spy(monkeypatch, budgets.spent_budget)
        result = await oblix.execute("hi", stream=False)
    assert result["model_id"] == LOCAL and len(reads) == 1
    assert "daily budget of $0 is spent" in result["routing_decision"]["reason"]


# -- model health ---------------------------------------------------------------------------


def test_the_request_path_reaches_model_health_only_through_the_executor() -> None:
    """Cooling is decided by routing's screen, asked of the executor (Executor.screen); nothing
    in the request path but the executor touches its breaker, and the breaker has no second
    ordering of candidates."""
    offenders = []
    for source in (ROOT / "oblix_core" / "request").glob("*.py"):
        if source.name == "execution.py":
            continue
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "breaker":
                offenders.append(f"{source.name}:{node.lineno}")
    assert offenders == []
    assert not hasattr(CircuitBreaker, "order")


@pytest.mark.anyio
async def test_every_path_skips_a_cooling_model_by_the_plan_alone(
    client: OblixClient, path: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.executor.watch(client.models)  # the executor learns the cloud model's endpoint
    client.executor.breaker.record_failure(CLOUD, at_once=True, error="refused")
    assert client.executor.breaker.flush()  # health.json: the CLI's own client reads it
    screens = spy(monkeypatch, routing.screen)
    sid = await client.create_session(title="cooling")
    result = await path(client, "hello", sid)
    assert result["model_id"] == LOCAL and len(screens) == 1
    assert [m.model_id for m in screens.results[0].candidates] == [LOCAL]
    assert not PLUGIN.calls["cloud"]  # the cooling model was never started


@pytest.fixture(autouse=True)
def _fresh_plugin() -> Iterator[None]:
    PLUGIN.calls.clear()
    PLUGIN.scripts.clear()
    yield
