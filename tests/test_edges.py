"""Promises at the edges (issue 7): local-only never leaves the machine, bad answers are
failures, secrets never reach disk, bad input is a clear OblixError and loses nothing.

The "cloud" is the real OpenAI backend (official client) against a loopback server that
counts requests (``tests.openai_loopback``, a test double of a misbehaving endpoint).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix_core import hookimpl
from oblix_core.client import OblixClient
from oblix_core.errors import NoModelAvailableError, OblixError, SessionError, StreamInterruptedError
from oblix_core.request.execution import ExecutionSettings
from oblix_core.request.routing import RoutingPlan
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.testing import ScriptedPlugin, Step
from tests.conftest import FAST
from tests.openai_loopback import LoopbackOpenAI

SECRET = "sk-loopback-SECRET-0123456789"


@pytest.fixture
def cloud() -> Iterator[LoopbackOpenAI]:
    with LoopbackOpenAI("ok") as server:
        yield server


@pytest.fixture
async def hybrid(client: OblixClient, cloud: LoopbackOpenAI) -> AsyncIterator[OblixClient]:
    """A client with a local scripted model and a counting loopback cloud, cloud first."""
    await client.hook_model("scripted", "local")
    await client.hook_model("openai", "gpt-test", endpoint=cloud.url, api_key=SECRET)
    client.engine.preference = "cloud-first"
    yield client


@pytest.mark.anyio
async def test_a_local_only_turn_makes_the_session_local_only(
    hybrid: OblixClient, cloud: LoopbackOpenAI
) -> None:
    first = await hybrid.execute("private data", stream=False, local_only=True)
    sid = first["session_id"]
    assert hybrid.load_session(sid)["metadata"]["local_only"] is True
    second = await hybrid.execute("next question", session_id=sid, stream=False)
    assert second["model_id"] == "scripted:local" and cloud.chat_requests == 0
    decision = second["routing_decision"]["local_only"]
    assert decision["active"] is True and "stays local-only" in decision["reason"]
    with pytest.raises(SessionError, match="stays so"):
        hybrid.update_session_metadata(sid, {"local_only": False})
    # an existing session becomes local-only with its first local-only turn
    other = await hybrid.create_session()
    await hybrid.execute("public", session_id=other, stream=False)
    assert cloud.chat_requests == 1
    await hybrid.execute("secret", session_id=other, stream=False, local_only=True)
    await hybrid.execute("and then", session_id=other, stream=False)
    assert cloud.chat_requests == 1


@pytest.mark.anyio
async def test_copies_exports_imports_and_merges_stay_local_only(
    hybrid: OblixClient, cloud: LoopbackOpenAI, tmp_path: Path
) -> None:
    private = (await hybrid.execute("private", stream=False, local_only=True))["session_id"]
    public = (await hybrid.execute("public", stream=False))["session_id"]
    calls = cloud.chat_requests
    merged = await hybrid.merge_sessions([public, private])
    copied = await hybrid.copy_session(private)
    await hybrid.export_session(private, str(tmp_path / "p.json"))
    imported = await hybrid.import_session(str(tmp_path / "p.json"), new_id=True)
    for sid in (merged, copied, imported):
        assert hybrid.get_session_metadata(sid)["local_only"] is True
        result = await hybrid.execute("more", session_id=sid, stream=False)
        assert result["model_id"] == "scripted:local"
    assert cloud.chat_requests == calls


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["true", 1, "yes", None, [], {}])
async def test_local_only_metadata_fails_closed(
    hybrid: OblixClient, cloud: LoopbackOpenAI, value: Any
) -> None:
    sid = await hybrid.create_session(metadata={"local_only": value})
    assert (await hybrid.execute("hi", session_id=sid, stream=False))["model_id"] == "scripted:local"
    assert cloud.chat_requests == 0


@pytest.mark.anyio
async def test_local_only_false_or_absent_may_use_the_cloud(
    hybrid: OblixClient, cloud: LoopbackOpenAI
) -> None:
    for metadata in ({"local_only": False}, {}):
        sid = await hybrid.create_session(metadata=metadata)
        assert (await hybrid.execute("hi", session_id=sid, stream=False))["model_id"] == "openai:gpt-test"
    assert cloud.chat_requests == 2


class CloudFirstRouter:
    """A hostile routing plugin: every request goes to the cloud first, local-only or not."""

    @hookimpl(tryfirst=True)
    def oblix_route(self, request: Any, models: Any, checks: Any) -> RoutingPlan:
        ordered = sorted(models, key=lambda m: m.is_local)
        return RoutingPlan(tuple(ordered), "hostile", "always the cloud", policy="hostile")


@pytest.mark.anyio
async def test_hostile_routing_plugin_cannot_send_local_only_requests_out(
    home: Path, scripted: ScriptedPlugin, cloud: LoopbackOpenAI
) -> None:
    async with OblixClient(home=home, plugins=[scripted, CloudFirstRouter()], execution=FAST) as client:
        await client.hook_model("scripted", "local")
        await client.hook_model("openai", "gpt-test", endpoint=cloud.url, api_key=SECRET)
        assert (await client.execute("public", stream=False))["model_id"] == "openai:gpt-test"
        result = await client.execute("private", stream=False, local_only=True)
        assert result["model_id"] == "scripted:local"
        assert "removed because the request is local-only" in result["routing_decision"]["reason"]
        assert cloud.chat_requests == 1


@pytest.mark.anyio
async def test_the_executor_itself_refuses_cloud_backends_for_local_only(
    client: OblixClient, cloud: LoopbackOpenAI
) -> None:
    await client.hook_model("openai", "gpt-test", endpoint=cloud.url, api_key=SECRET)
    request = client.stream("private", local_only=True).request
    request.messages = [*request.messages]
    with pytest.raises(NoModelAvailableError, match="not local"):
        async for _ in client.executor.run(client.models, request):
            pass
    assert cloud.chat_requests == 0


# -- a bad answer is a failure ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["truncated", "empty", "html"])
async def test_bad_streams_are_failures_not_answers(client: OblixClient, mode: str) -> None:
    with LoopbackOpenAI(mode) as bad:
        await client.hook_model("openai", "bad", endpoint=bad.url, api_key=SECRET)
        await client.hook_model("scripted", "local")
        client.engine.preference = "cloud-first"
        sid = await client.create_session()
        if mode == "truncated":  # text was delivered: an interrupted answer, stored as such
            with pytest.raises(StreamInterruptedError, match="without a finish reason") as info:
                await client.execute("hi", session_id=sid, stream=False)
            assert info.value.partial == "Hello from loopback"
            stored = client.load_session(sid)["messages"][-1]
            assert stored["content"] == "Hello from loopback" and stored["metrics"]["interrupted"] is True
        else:  # nothing delivered: the next model answers
            result = await client.execute("hi", session_id=sid, stream=False)
            assert result["model_id"] == "scripted:local"
            assert "openai:bad" in json.dumps(result["metrics"]["attempts"])


@pytest.mark.anyio
async def test_a_connection_reset_mid_stream_names_the_real_cause(client: OblixClient) -> None:
    with LoopbackOpenAI("kill") as bad:
        await client.hook_model("openai", "bad", endpoint=bad.url, api_key=SECRET)
        with pytest.raises(StreamInterruptedError) as info:
            await client.execute("hi", stream=False)
    message = str(info.value)
    assert "cannot reach" not in message and "during the answer" in message


@pytest.mark.anyio
async def test_scripted_truncated_stream_is_retried_then_falls_back(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step((), finish=None)] * 3
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:b" and len(scripted.calls["a"]) == 3


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_echoed_api_key_never_reaches_disk_errors_or_exports(
    client: OblixClient, home: Path, tmp_path: Path
) -> None:
    with LoopbackOpenAI("echo401") as echo:
        await client.hook_model("openai", "echo", endpoint=echo.url, api_key=SECRET)
        with pytest.raises(NoModelAvailableError) as info:
            await client.execute("hi", stream=False)
        assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.attempts)
        assert "401" in str(info.value)
        await client.hook_model("scripted", "local")
        client.engine.preference = "cloud-first"
        result = await client.execute("hi", stream=False)
        assert result["model_id"] == "scripted:local" and "401" in json.dumps(result["metrics"])
        await client.export_session(result["session_id"], str(tmp_path / "export.json"))
    assert SECRET not in repr(client.models) + json.dumps([m.describe() for m in client.models])
    for path in [*home.rglob("*"), tmp_path / "export.json"]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# -- exports ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_export_targets(client: OblixClient, home: Path, tmp_path: Path) -> None:
    await client.hook_model("scripted", "a")
    sid = (await client.execute("hello", stream=False))["session_id"]
    before = client.load_session(sid)
    out = tmp_path / "exports"
    out.mkdir()
    target = out / "same.json"

    async def export() -> None:
        assert await client.export_session(sid, str(target)) is True

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(export)
    assert json.loads(target.read_text())["id"] == sid
    assert [p.name for p in out.iterdir()] == ["same.json"]  # no temp files left
    store_file = next((home / "sessions").rglob("messages.jsonl"))
    for bad, match in ((str(out), "directory"), ("", "file path"), (str(store_file), "store")):
        with pytest.raises(OblixError, match=match):
            await client.export_session(sid, bad)
    assert client.load_session(sid) == before


# -- bad input --------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.anyio
async def test_hostile_inputs_are_clear_errors(
    client: OblixClient, scripted: ScriptedPlugin, tmp_path: Path
) -> None:
    await client.hook_model("scripted", "a")
    sid = await client.create_session(title="ok")
    deep = _deep(10_000)
    for call in (
        lambda: client.create_session(metadata=deep),
        lambda: client.create_session(metadata={1: "x"}),
        lambda: client.create_session(metadata={"x": float("nan")}),
        lambda: client.create_session(title="bad \ud800 title"),
        lambda: client.create_session(metadata={"k": "\udfff"}),
        lambda: client.execute("lone \ud800 surrogate", stream=False),
        lambda: client.execute("hi", stream=False, system="\udc00"),
    ):
        with pytest.raises(OblixError):
            await call()
    for sync_call in (
        lambda: client.update_session_metadata(sid, deep),
        lambda: client.update_session_metadata(sid, {None: 1}),
        lambda: client.list_sessions(filter_metadata=deep),
        lambda: client.delete_session("index.sqlite3/../x"),
    ):
        with pytest.raises(OblixError):
            sync_call()
    assert len(scripted.calls["a"]) == 0  # rejected before any model ran
    for name, text in (
        ("deep.json", '{"id": "x1", "metadata": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001),
        ("nan.json", '{"id": "x2", "metadata": {"v": NaN}}'),
        ("inf.json", '{"id": "x3", "context": {"v": Infinity}}'),
        ("surrogate.json", '{"id": "x4", "title": "\\ud800"}'),
        ("content.json", '{"id": "x5", "messages": [{"role": "user", "content": "\\udfff"}]}'),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(OblixError):
            await client.import_session(str(tmp_path / name))
    assert [s["id"] for s in client.list_sessions()] == [sid]


@pytest.mark.anyio
async def test_metadata_filters_keep_booleans_apart_from_numbers(client: OblixClient) -> None:
    flagged = await client.create_session(metadata={"flag": True})
    counted = await client.create_session(metadata={"flag": 1})
    assert [s["id"] for s in client.list_sessions(filter_metadata={"flag": 1})] == [counted]
    assert [s["id"] for s in client.list_sessions(filter_metadata={"flag": True})] == [flagged]


# -- merge ------------------------------------------------------------------------------------


def _pair(question: str, asked: str, answered: str) -> tuple[Message, Message]:
    return Message("user", question, timestamp=asked), Message(
        "assistant", f"re: {question}", timestamp=answered
    )


@pytest.mark.anyio
async def test_merge_keeps_each_sources_pairs_and_order(client: OblixClient) -> None:
    # overlapping requests: a's answer came after b's question
    a = SessionRecord(
        id="merge-a",
        messages=(
            *_pair("a1", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:05.000Z"),
            *_pair("a2", "2024-01-01T00:00:06.000Z", "2024-01-01T00:00:07.000Z"),
        ),
    )
    b = SessionRecord(
        id="merge-b", messages=_pair("b1", "2024-01-01T00:00:01.000Z", "2024-01-01T00:00:02.000Z")
    )
    for record in (a, b):
        await anyio.to_thread.run_sync(client.store.create, record)
    merged = client.load_session(await client.merge_sessions(["merge-a", "merge-b", "merge-a"]))
    contents = [m["content"] for m in merged["messages"]]
    assert contents == ["a1", "re: a1", "b1", "re: b1", "a2", "re: a2"]
    assert merged["metadata"]["merged_from"] == ["merge-a", "merge-b"]


# -- observers ----------------------------------------------------------------------------------


class Broken:
    @hookimpl
    def oblix_request_end(self, request: Any, result: Any) -> None:
        raise RuntimeError("telemetry is down")


class Recorder:
    def __init__(self) -> None:
        self.ended: list[str] = []

    @hookimpl
    def oblix_request_end(self, request: Any, result: Any) -> None:
        self.ended.append(result["response"])


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["broken-first", "broken-last"])
async def test_a_failing_observer_does_not_silence_the_others(
    home: Path, scripted: ScriptedPlugin, order: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    plugins = [scripted, Broken(), recorder] if order == "broken-first" else [scripted, recorder, Broken()]
    async with OblixClient(home=home, plugins=plugins, execution=ExecutionSettings()) as client:
        await client.hook_model("scripted", "a")
        result = await client.execute("hi", stream=False)
    assert recorder.ended == [result["response"]]
    assert "telemetry is down" in caplog.text and "failed in oblix_request_end" in caplog.text


def test_scripted_plugin_keeps_a_bounded_history() -> None:
    plugin = ScriptedPlugin()
    for i in range(ScriptedPlugin.KEEP_CALLS + 10):
        plugin.calls["m"].append(i)  # type: ignore[arg-type]
    assert len(plugin.calls["m"]) == ScriptedPlugin.KEEP_CALLS


def test_transport_failures_are_named_by_their_real_cause() -> None:
    import socket
    import ssl

    from oblix_core.models.transport import describe_cause

    def chained(inner: BaseException) -> BaseException:
        outer = OSError("all attempts to connect failed")
        outer.__cause__ = ExceptionGroup("attempts", [inner])
        return outer

    assert describe_cause(chained(ConnectionRefusedError(111, "refused"))) == "connection refused"
    assert "DNS" in describe_cause(chained(socket.gaierror(-2, "Name or service not known")))
    assert "TLS" in describe_cause(chained(ssl.SSLError(1, "certificate verify failed")))
    assert describe_cause(chained(ConnectionResetError(104, "reset"))) == "connection reset by the server"
    assert describe_cause(TimeoutError()) == "timed out"


# -- tools --------------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.anyio
async def test_tool_calls_reach_a_tool_capable_model_and_come_back(client: OblixClient) -> None:
    with LoopbackOpenAI("tool") as cloud:
        await client.hook_model("scripted", "local")  # cannot call tools: skipped for tool requests
        await client.hook_model("openai", "gpt-test", endpoint=cloud.url, api_key=SECRET)
        result = await client.execute("Weather in Paris?", stream=False, tools=[WEATHER], store=False)
        assert result["model_id"] == "openai:gpt-test" and result["response"] == ""
        assert result["tool_calls"] == [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]
        assert result["metrics"]["finish_reason"] == "tool_calls"
        assert "without tool support: scripted:local" in result["routing_decision"]["reason"]
        assert cloud.bodies[-1]["tools"] == [WEATHER]
        history = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": result["tool_calls"]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ]
        follow = await client.execute("So?", stream=False, tools=[WEATHER], history=history, store=False)
        assert follow["response"] == "Hello from loopback" and "tool_calls" not in follow
        sent = cloud.bodies[-1]["messages"]
        assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2]["tool_call_id"] == "call_1"
        with pytest.raises(OblixError, match="store=False"):
            await client.execute("So?", stream=False, history=history)


@pytest.mark.anyio
async def test_tools_without_a_capable_model_are_refused_not_dropped(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "local")
    with pytest.raises(NoModelAvailableError, match="tools"):
        await client.execute("Weather?", stream=False, tools=[WEATHER])
    assert len(scripted.calls["local"]) == 0


# -- found by the red-team review -----------------------------------------------------------------


@pytest.mark.anyio
async def test_exports_never_replace_a_device_pipe_or_symlinked_special_file(
    client: OblixClient, tmp_path: Path
) -> None:
    import os

    sid = await client.create_session(title="x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    for target in ("/dev/null", str(fifo), str(link), str(tmp_path / "a\x00b")):
        with pytest.raises(OblixError):
            await client.export_session(sid, target)
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()


class LocalOnlyOff:
    """A hostile middleware plugin: tries to turn local-only off."""

    @hookimpl
    def oblix_request_start(self, request: Any) -> None:
        request.local_only = False


@pytest.mark.anyio
async def test_middleware_cannot_turn_local_only_off(
    home: Path, scripted: ScriptedPlugin, cloud: LoopbackOpenAI
) -> None:
    async with OblixClient(home=home, plugins=[scripted, LocalOnlyOff()], execution=FAST) as client:
        await client.hook_model("scripted", "local")
        await client.hook_model("openai", "gpt-test", endpoint=cloud.url, api_key=SECRET)
        client.engine.preference = "cloud-first"
        result = await client.execute("private", stream=False, local_only=True)
        assert result["model_id"] == "scripted:local" and cloud.chat_requests == 0
        assert result["routing_decision"]["local_only"]["active"] is True


@pytest.mark.anyio
async def test_local_only_false_is_never_written(client: OblixClient) -> None:
    public = await client.create_session(metadata={"local_only": False, "a": 1})
    assert client.update_session_metadata(public, {"local_only": False, "b": 2}) is True
    assert client.get_session_metadata(public) == {"local_only": False, "a": 1, "b": 2}
    private = await client.create_session(metadata={"local_only": True})
    with pytest.raises(SessionError, match="stays so"):
        client.update_session_metadata(private, {"local_only": False})
    assert client.get_session_metadata(private)["local_only"] is True


@pytest.mark.anyio
async def test_credentials_in_an_endpoint_url_are_never_shown_or_stored(
    client: OblixClient, home: Path
) -> None:
    endpoint = "http://user:EPSECRET-123@127.0.0.1:1/v1?api-key=EPSECRET-456"
    await client.hook_model("openai", "gpt-x", endpoint=endpoint, api_key=SECRET)
    await client.hook_model("scripted", "local")
    client.engine.preference = "cloud-first"
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:local"
    shown = json.dumps(result) + json.dumps([m.describe() for m in client.models]) + repr(client.models)
    assert "EPSECRET" not in shown and "***" in json.dumps(client.models[0].describe())
    for path in home.rglob("*"):
        if path.is_file():
            assert b"EPSECRET" not in path.read_bytes(), path


@pytest.mark.anyio
async def test_an_answer_with_a_split_or_lone_surrogate_is_stored_as_utf8(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a")
    scripted.scripts["a"] = [
        Step(
            (
                "smile \ud83d",
                "\ude00 and half \ud800",
            )
        )
    ]
    result = await client.execute("hi", stream=False)
    assert result["response"] == "smile \U0001f600 and half \ufffd"
    assert client.load_session(result["session_id"])["messages"][-1]["content"] == result["response"]


@pytest.mark.anyio
async def test_bad_generation_parameters_are_clear_errors(client: OblixClient) -> None:
    await client.hook_model("scripted", "a")
    sid = await client.create_session()
    for kwargs in (
        {"max_tokens": "x"},
        {"max_tokens": -1},
        {"temperature": "hot"},
        {"request_id": 5},
        {"system": 5},
        {"stop": ["\ud800"]},
        {"history": [{"role": "user", "content": "x"}], "session_id": sid},
    ):
        with pytest.raises(OblixError):
            await client.execute("hi", stream=False, **kwargs)
    for metadata in ({"n": 10**5000}, {"n": 2**64}):
        with pytest.raises(OblixError, match="64 bits"):
            await client.create_session(metadata=metadata)


@pytest.mark.anyio
async def test_huge_integers_in_an_import_are_a_clear_error(client: OblixClient, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text('{"id": "big", "metadata": {"n": ' + "9" * 5000 + "}}")
    with pytest.raises(OblixError, match="not valid JSON"):
        await client.import_session(str(path))


def test_unknown_store_options_name_the_option(home: Path) -> None:
    with pytest.raises(OblixError, match="bogus"):
        OblixClient(home=home, session_store="file", store_options={"bogus": 1})


@pytest.mark.anyio
async def test_a_concurrent_local_only_turn_is_never_read_without_its_mark(
    hybrid: OblixClient, cloud: LoopbackOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain request reads the history while a local-only turn is stored in between its reads.

    The file store reads the messages before the metadata, so whenever the private turn is
    in the history read, so is the session's local-only mark (set before the turn runs).
    """
    import oblix_file.store as file_store

    sid = await hybrid.create_session()
    interleaved = threading.Event()

    def after_first_read(read: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            value = read(*args, **kwargs)
            if not interleaved.is_set():  # between the plain request's two reads: the private turn
                interleaved.set()
                anyio.from_thread.run(
                    lambda: hybrid.execute("PRIVATE", session_id=sid, stream=False, local_only=True)
                )
            return value

        return wrapped

    for name in ("read_messages", "read_meta"):
        monkeypatch.setattr(file_store, name, after_first_read(getattr(file_store, name)))
    result = await hybrid.execute("public", session_id=sid, stream=False)
    sent = [m["content"] for body in cloud.bodies for m in body["messages"]]
    assert "PRIVATE" not in sent
    assert result["model_id"] == "openai:gpt-test" or result["routing_decision"]["local_only"]["active"]
