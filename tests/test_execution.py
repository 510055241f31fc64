"""The routing and execution engine, driven through the real hooks with scripted backends.

The scripted backend (``oblix_core.testing.ScriptedBackend``) is a test double: it
replays scripted chunks and failures so that retries, fallback, cooldown, timeouts and
interrupted streams can be provoked deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from oblix_core import hookimpl
from oblix_core.client import OblixClient
from oblix_core.errors import NoModelAvailableError, OblixError, StreamInterruptedError
from oblix_core.models.backend import ChatMessage
from oblix_core.request.context import Request
from oblix_core.request.execution import ExecutionSettings
from oblix_core.testing import ScriptedPlugin, Step

RESULT_KEYS = {
    "response",
    "model_id",
    "session_id",
    "request_id",
    "metrics",
    "agent_checks",
    "routing_decision",
}


@pytest.mark.anyio
async def test_execute_returns_reference_result_and_persists(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(("Hel", "lo", "!"))]
    sid = await client.create_session("Technical Support Chat")
    result = await client.execute("I'm having trouble", session_id=sid, stream=False, request_id="req-1")
    assert set(result) == RESULT_KEYS
    assert result["response"] == "Hello!" and result["model_id"] == "scripted:a"
    assert result["session_id"] == sid and result["request_id"] == "req-1"
    metrics = result["metrics"]
    for key in ("time_to_first_token_ms", "tokens_per_second", "latency_ms", "input_tokens", "output_tokens"):
        assert metrics[key] is not None
    messages = client.load_session(sid)["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "I'm having trouble"),
        ("assistant", "Hello!"),
    ]
    assert messages[1]["model_id"] == "scripted:a" and messages[1]["metrics"]["output_tokens"] >= 1


@pytest.mark.anyio
async def test_history_is_sent_and_trimmed_by_tokens(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "small", context_window=120)
    sid = await client.create_session(initial_context={"user_id": "u1"})
    for i in range(12):
        await client.execute(f"question number {i} " + "x" * 40, session_id=sid, stream=False)
    sent = scripted.calls["small"][-1].messages
    assert sent[0].role == "system" and "u1" in sent[0].content
    assert sent[-1].content.startswith("question number 11")
    assert 1 < len(sent) < 24  # older turns dropped, the newest kept
    backend = client.models[0]
    assert backend.count_message_tokens(sent) <= 120 - 30  # window minus the answer reserve
    history = [m.content for m in sent[1:-1]]
    assert history[-1].startswith("echo: question number 10")  # the newest turns are the ones kept
    assert not any(c.startswith(("question number 0 ", "echo: question number 0 ")) for c in history)


@pytest.mark.anyio
async def test_streaming_api_for_programs(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(("one ", "two ", "three"))]
    response = client.stream("count")
    chunks = [chunk async for chunk in response]
    assert chunks == ["one ", "two ", "three"]
    assert response.result is not None and response.result["response"] == "one two three"
    scripted.scripts["a"] = [Step(("all ", "at once"))]
    collected = await client.stream("again", session_id=response.result["session_id"]).collect()
    assert collected["response"] == "all at once" and collected["metrics"]["history_messages_sent"] == 3


@pytest.mark.anyio
async def test_stream_true_prints_to_terminal(
    client: OblixClient, scripted: ScriptedPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(("printed ", "answer"))]
    await client.execute("hi")
    assert "printed answer" in capsys.readouterr().out


@pytest.mark.anyio
async def test_transient_errors_are_retried(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(fail="transient"), Step(fail="transient"), Step(("ok",))]
    result = await client.execute("hi", stream=False)
    assert result["response"] == "ok" and len(scripted.calls["a"]) == 3
    assert [a["error"] is None for a in result["metrics"]["attempts"]] == [False, False, True]


@pytest.mark.anyio
async def test_fallback_after_retries_and_permanent_errors(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step(fail="transient")] * 3
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:b" and len(scripted.calls["a"]) == 3  # 1 try + 2 retries
    assert "scripted:a" in client.executor.breaker.cooling_down()  # 3 failures in a row
    client.executor.breaker.record_success("scripted:a")
    scripted.scripts["a"] = [Step(fail="permanent")]
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:b" and len(scripted.calls["a"]) == 4  # no retry
    assert "scripted:a" in str(result["metrics"]["attempts"])


@pytest.mark.anyio
async def test_cooldown_skips_a_failing_model(
    home: Any, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    settings = ExecutionSettings(max_retries=0, backoff_initial=0, failure_threshold=2, cooldown=60)
    client = make_client(home=home, plugins=[scripted], execution=settings)
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step(fail="transient"), Step(fail="transient")]
    for _ in range(2):
        assert (await client.execute("hi", stream=False))["model_id"] == "scripted:b"
    calls = len(scripted.calls["a"])
    for _ in range(3):
        assert (await client.execute("hi", stream=False))["model_id"] == "scripted:b"
    # a transient failure with its retries spent cools the model down at once (issue 10)
    assert len(scripted.calls["a"]) == calls == 1  # cooled down: not tried again
    assert "scripted:a" in client.executor.breaker.cooling_down()


@pytest.mark.anyio
async def test_all_failing_raises_and_stores_nothing(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(fail="permanent")]
    sid = await client.create_session()
    with pytest.raises(NoModelAvailableError, match="scripted permanent failure") as info:
        await client.execute("hi", session_id=sid, stream=False)
    assert "scripted:a" in info.value.errors
    assert client.load_session(sid)["messages"] == []


@pytest.mark.anyio
async def test_failure_mid_stream_is_not_retried(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step(("partial ", "answer"), fail="transient")]
    sid = await client.create_session()
    with pytest.raises(StreamInterruptedError) as info:
        await client.execute("hi", session_id=sid, stream=False)
    assert info.value.partial == "partial answer"
    assert len(scripted.calls["b"]) == 0
    stored = client.load_session(sid)["messages"]
    assert stored[1]["content"] == "partial answer" and stored[1]["metrics"]["interrupted"] is True
    assert "scripted transient failure" in stored[1]["metrics"]["error"]  # the real cause


@pytest.mark.anyio
async def test_first_token_timeout_falls_back(
    home: Any, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    settings = ExecutionSettings(max_retries=0, first_token_timeout=0.2, total_timeout=5)
    client = make_client(home=home, plugins=[scripted], execution=settings)
    await client.hook_model("scripted", "slow")
    await client.hook_model("scripted", "fast")
    scripted.scripts["slow"] = [Step(("late",), delay=3)]
    with anyio.fail_after(2):
        result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:fast"
    assert "first token" in str(result["metrics"]["attempts"][0]["error"])


@pytest.mark.anyio
async def test_total_timeout_mid_stream_interrupts(
    home: Any, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    settings = ExecutionSettings(max_retries=0, first_token_timeout=1, total_timeout=0.5)
    client = make_client(home=home, plugins=[scripted], execution=settings)
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(tuple("abcdefghij"), delay=0.1)]
    with pytest.raises(StreamInterruptedError, match="in time"):
        await client.execute("hi", stream=False)


@pytest.mark.anyio
async def test_breaking_out_of_a_stream_stops_the_model(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [Step(tuple("x" * 100), delay=0.01)]
    backend = client.models[0]
    sid = await client.create_session()
    async with client.stream("hi", session_id=sid) as response:
        async for _ in response:
            break
    with anyio.fail_after(1):
        await backend.cancelled.wait()  # type: ignore[attr-defined]
    assert response.result is None
    assert client.load_session(sid)["messages"] == []


@pytest.mark.anyio
async def test_many_concurrent_sessions(client: OblixClient, scripted: ScriptedPlugin) -> None:
    await client.hook_model("scripted", "a")
    sessions = [await client.create_session(f"s{i}") for i in range(8)]
    results: dict[str, list[str]] = {sid: [] for sid in sessions}

    async def talk(sid: str) -> None:
        for turn in range(3):
            result = await client.execute(f"{sid}-{turn}", session_id=sid, stream=False)
            assert result["session_id"] == sid
            results[sid].append(result["response"])

    async with anyio.create_task_group() as tg:
        for sid in sessions:
            tg.start_soon(talk, sid)
    for sid in sessions:
        contents = [m["content"] for m in client.load_session(sid)["messages"]]
        assert contents == [x for t in range(3) for x in (f"{sid}-{t}", f"echo: {sid}-{t}")]


@pytest.mark.anyio
async def test_no_model_hooked_is_a_clear_error(client: OblixClient) -> None:
    with pytest.raises(NoModelAvailableError, match="hook_model"):
        await client.execute("hi", stream=False)
    with pytest.raises(OblixError, match="empty"):
        await client.execute("   ", stream=False)
    assert client.list_sessions() == []  # a failed first request leaves no empty session behind


@pytest.mark.anyio
async def test_execute_without_session_creates_one(client: OblixClient) -> None:
    await client.hook_model("scripted", "a")
    result = await client.execute("first words here", stream=False)
    data = client.load_session(result["session_id"])
    assert data["title"] == "first words here" and len(data["messages"]) == 2
    current = await client.create_and_use_session("current")
    assert (await client.execute("again", stream=False))["session_id"] == current


class Redactor:
    """A middleware plugin: redacts before the model sees the prompt, records outcomes."""

    def __init__(self) -> None:
        self.ended: list[dict[str, Any]] = []
        self.failed: list[BaseException] = []

    @hookimpl
    def oblix_request_start(self, request: Request) -> None:
        request.messages[:] = [
            ChatMessage(m.role, m.content.replace("sk-secret", "[REDACTED]")) for m in request.messages
        ]

    @hookimpl
    def oblix_request_end(self, request: Request, result: dict[str, Any]) -> None:
        self.ended.append(result)

    @hookimpl
    def oblix_request_error(self, request: Request, error: BaseException) -> None:
        self.failed.append(error)


@pytest.mark.anyio
async def test_middleware_hooks(
    home: Any, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    redactor = Redactor()
    client = make_client(home=home, plugins=[scripted, redactor])
    await client.hook_model("scripted", "a")
    result = await client.execute("my key is sk-secret", stream=False)
    assert result["response"] == "echo: my key is [REDACTED]"
    assert redactor.ended == [result]
    scripted.scripts["a"] = [Step(fail="permanent")]
    with pytest.raises(NoModelAvailableError):
        await client.execute("again", stream=False)
    assert isinstance(redactor.failed[0], NoModelAvailableError)


@pytest.mark.anyio
async def test_custom_model_type(home: Any, make_client: Callable[..., OblixClient]) -> None:
    plugin = ScriptedPlugin(model_type="my-backend")
    client = make_client(home=home, plugins=[plugin])
    from oblix import ModelType

    assert await client.hook_model(ModelType.CUSTOM, "m1", backend="my-backend") is True
    assert [m.model_id for m in client.models] == ["my-backend:m1"]
    with pytest.raises(OblixError, match="backend="):
        await client.hook_model(ModelType.CUSTOM, "m2")
    with pytest.raises(OblixError, match="already hooked"):
        await client.hook_model("my-backend", "m1")
    with pytest.raises(OblixError, match="No model backend"):
        await client.hook_model("nonexistent", "x")


@pytest.mark.anyio
async def test_misspelt_options_are_errors(home: Any, make_client: Callable[..., OblixClient]) -> None:
    from oblix import ModelType

    client = make_client(home=home)
    with pytest.raises(OblixError, match="n_ctxx"):
        await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", api_key="k", n_ctxx=5)
    with pytest.raises(OblixError, match="session store"):
        OblixClient(home=home, session_store="file", store_options={"roots": "x"})


@pytest.mark.anyio
async def test_concurrent_requests_in_one_session_keep_their_pairs(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    sid = await client.create_session()
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(lambda i=i: client.execute(f"q{i}", session_id=sid, stream=False))
    contents = [m["content"] for m in client.load_session(sid)["messages"]]
    assert len(contents) == 20
    assert sorted(contents[::2]) == sorted(f"q{i}" for i in range(10))
    assert all(a == f"echo: {q}" for q, a in zip(contents[::2], contents[1::2], strict=True))


@pytest.mark.anyio
async def test_history_given_by_the_caller_and_nothing_stored(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    result = await client.execute("and now?", stream=False, history=history, store=False)
    assert result["response"] == "echo: and now?"
    sent = scripted.calls["a"][-1].messages
    assert [(m.role, m.content) for m in sent] == [
        ("system", "be brief"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "and now?"),
    ]
    assert client.list_sessions() == []  # stateless: nothing stored
    with pytest.raises(OblixError, match="history"):
        await client.execute("x", stream=False, history=[{"role": "robot", "content": "?"}])
    stored = await client.execute("keep it", stream=False, history=history)
    assert [m["content"] for m in client.load_session(stored["session_id"])["messages"]] == [
        "be brief",
        "hi",
        "hello",
        "keep it",
        "echo: keep it",
    ]


@pytest.mark.anyio
async def test_routing_decision_mid_stream_at_the_end_and_after_a_failure(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """The stream's ``routing_decision`` (made from the plan when first read): before routing
    ``None``; mid-answer the plan with nothing selected yet; at the end the result's own
    decision; after every model failed, the attempts (what chat ``/why`` and ``--explain`` show)."""
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step(("one ", "two"))]
    response = client.stream("count", model="scripted:a", fallback=True)
    assert response.routing_decision is None
    first = await response.__anext__()
    decision = response.routing_decision
    assert first == "one " and decision is not None
    assert decision["selected"] is None and decision["attempts"] == []
    assert decision["candidates"] == ["scripted:a", "scripted:b"] and decision["rule"] == "explicit"
    rest = [chunk async for chunk in response]
    assert rest == ["two"] and response.result is not None
    final = response.routing_decision
    assert final is response.result["routing_decision"] and final["selected"] == "scripted:a"
    assert [a["model_id"] for a in final["attempts"]] == ["scripted:a"]
    assert decision["selected"] is None  # the mid-answer decision the reader was given is its own

    scripted.scripts["a"] = [Step(fail="permanent")]
    scripted.scripts["b"] = [Step(fail="permanent")]
    failing = client.stream("again", model="scripted:a", fallback=True)
    with pytest.raises(NoModelAvailableError):
        await failing.collect()
    failed = failing.routing_decision
    assert failed is not None and failed["selected"] is None
    assert [a["model_id"] for a in failed["attempts"]] == ["scripted:a", "scripted:b"]
