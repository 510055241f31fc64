"""The Claude backend with the official ``anthropic`` SDK against a loopback double of the Messages API.

No real Anthropic endpoint is reachable here: :mod:`tests.anthropic_double` speaks the
Messages API's wire format (SSE events, error bodies, ``retry-after``, a simulated
prompt cache) and refuses what the real API refuses (no ``max_tokens``, turns that do
not alternate, a ``system`` role in ``messages``, empty text blocks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from oblix import ModelType, OblixClient
from oblix.plugin import (
    ChatMessage,
    ConfigError,
    GenerationRequest,
    PermanentModelError,
    StreamChunk,
    TransientModelError,
)
from oblix_anthropic import AnthropicBackend
from oblix_anthropic.backend import retry_after
from oblix_anthropic.mapping import OPENING, conversation
from oblix_core.testing import ModelBackendContract, ScriptedPlugin
from tests.anthropic_double import AnthropicDouble
from tests.conftest import FAST
from tests.support.net import free_port

SECRET = "sk-ant-oblix-test-SECRET-4242"
SONNET = "claude-3-5-sonnet-20241022"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {}}}},
}


@pytest.fixture
def double() -> Iterator[AnthropicDouble]:
    with AnthropicDouble(api_key=SECRET, min_cache_tokens=50) as server:
        yield server


@pytest.fixture
async def claude(double: AnthropicDouble) -> AsyncIterator[AnthropicBackend]:
    backend = AnthropicBackend(SONNET, endpoint=double.url, api_key=SECRET)
    await backend.start()
    yield backend
    await backend.aclose()


def ask(*messages: ChatMessage, max_tokens: int | None = None, **options: object) -> GenerationRequest:
    return GenerationRequest(messages, max_tokens=max_tokens, options=dict(options))


async def collect(backend: AnthropicBackend, request: GenerationRequest) -> list[StreamChunk]:
    return [chunk async for chunk in backend.stream(request)]


class TestClaudeContract(ModelBackendContract):
    secret = SECRET

    @pytest.fixture
    async def backend(self, claude: AnthropicBackend) -> AnthropicBackend:
        return claude


# -- the conversation as the Messages API wants it --------------------------------------


@pytest.mark.anyio
async def test_system_and_context_go_to_the_top_level_and_turns_alternate(
    claude: AnthropicBackend, double: AnthropicDouble
) -> None:
    request = ask(
        ChatMessage("system", "Be brief."),
        ChatMessage("system", 'Conversation context: {"customer": "acme"}'),
        ChatMessage("assistant", "Earlier answer."),  # trimmed history may start here
        ChatMessage("user", "first"),
        ChatMessage("user", "second"),
        ChatMessage("assistant", ""),  # an empty (interrupted) answer is left out
        ChatMessage("user", "third"),
    )
    chunks = await collect(claude, request)
    assert chunks[-1].finish_reason == "stop"  # the double refused nothing
    body = double.bodies[-1]
    assert [b["text"] for b in body["system"]] == ["Be brief.", 'Conversation context: {"customer": "acme"}']
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][0]["text"] == OPENING
    assert [b["text"] for b in body["messages"][2]["content"]] == ["first", "second", "third"]
    assert body["max_tokens"] == 8192  # always sent: the model's default when the request sets none


def test_default_max_tokens_per_model_and_option() -> None:
    assert AnthropicBackend("claude-3-opus-20240229", api_key="k").default_max_tokens == 4096
    assert AnthropicBackend("claude-3-haiku-20240307", api_key="k").default_max_tokens == 4096
    assert AnthropicBackend(SONNET, api_key="k").default_max_tokens == 8192
    assert AnthropicBackend(SONNET, api_key="k", max_tokens=1000).default_max_tokens == 1000
    assert AnthropicBackend(SONNET).context_window == 200_000
    with pytest.raises(ConfigError, match="max_tokens"):
        AnthropicBackend(SONNET, max_tokens=0)
    with pytest.raises(ConfigError, match="Accepted"):
        AnthropicBackend(SONNET, n_ctx=5)


@pytest.mark.anyio
async def test_request_options_mapped_and_unknown_ones_refused(
    claude: AnthropicBackend, double: AnthropicDouble
) -> None:
    request = GenerationRequest(
        (ChatMessage("user", "hi"),), temperature=1.7, max_tokens=50, options={"stop": "END", "top_k": 5}
    )
    await collect(claude, request)
    body = double.bodies[-1]
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["END"] and body["top_k"] == 5
    assert body["max_tokens"] == 50
    sent = len(double.bodies)
    with pytest.raises(PermanentModelError, match="frequency_penalty"):
        await collect(claude, ask(ChatMessage("user", "hi"), frequency_penalty=0.5))
    assert len(double.bodies) == sent  # refused before anything was sent


def test_conversation_maps_tool_calls_and_results() -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    system, turns = conversation(
        [
            ChatMessage("user", "go"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "42", tool_call_id="toolu_1"),
            ChatMessage("user", "and now?"),
        ]
    )
    assert system == []
    assert turns[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}],
    }
    assert turns[2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}
    assert turns[2]["content"][1] == {"type": "text", "text": "and now?"}


# -- usage, stop reasons, prompt cache --------------------------------------------------


@pytest.mark.anyio
async def test_usage_and_max_tokens_stop_reason(claude: AnthropicBackend) -> None:
    chunks = await collect(claude, ask(ChatMessage("user", "What is the capital of France?"), max_tokens=3))
    assert "".join(c.text for c in chunks) == "Paris is the"
    last = chunks[-1]
    assert last.finish_reason == "length"  # max_tokens: flagged as truncated
    assert last.usage is not None and last.usage.output_tokens == 3 and last.usage.input_tokens


@pytest.mark.anyio
async def test_resumed_session_reads_its_history_from_the_prompt_cache(
    double: AnthropicDouble, home: Path
) -> None:
    async with OblixClient(home=home, execution=FAST) as client:
        assert await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=double.url, api_key=SECRET) is True
        sid = await client.create_session(initial_context={"manual": "x" * 400})
        first = await client.execute("Tell me about the manual.", session_id=sid, stream=False)
        second = await client.execute("And the next chapter?", session_id=sid, stream=False)
        third = await client.execute("One more thing.", session_id=sid, stream=False)
    assert first["metrics"]["tokens_estimated"] is False
    assert first["metrics"]["cache_creation_input_tokens"] > 0  # system + history written to the cache
    assert second["metrics"]["cache_read_input_tokens"] > 0  # ...and read back when resumed
    assert third["metrics"]["cache_read_input_tokens"] > second["metrics"]["cache_read_input_tokens"]
    body = double.bodies[-1]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" in body["messages"][-2]["content"][-1]  # the history before the prompt
    assert "cache_control" not in body["messages"][-1]["content"][-1]  # the new prompt is not marked
    total = third["metrics"]["input_tokens"]
    assert total > third["metrics"]["cache_read_input_tokens"]  # input_tokens counts the whole prompt


@pytest.mark.anyio
async def test_prompt_cache_can_be_turned_off(double: AnthropicDouble) -> None:
    backend = AnthropicBackend(SONNET, endpoint=double.url, api_key=SECRET, prompt_cache=False)
    await backend.start()
    await collect(backend, ask(ChatMessage("system", "s"), ChatMessage("user", "a")))
    await backend.aclose()
    assert "cache_control" not in json.dumps(double.bodies[-1])


# -- tools -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tool_calls_both_ways_through_the_client(double: AnthropicDouble, home: Path) -> None:
    double.mode = "tool"
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=double.url, api_key=SECRET)
        asked = await client.execute(
            "Weather in Paris?", stream=False, store=False, tools=[WEATHER], tool_choice="required"
        )
        call = asked["tool_calls"][0]
        assert call["id"] == "toolu_double" and call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        assert double.bodies[-1]["tools"][0]["input_schema"]["properties"] == {"city": {}}
        assert double.bodies[-1]["tool_choice"] == {"type": "any"}
        history = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": asked["response"], "tool_calls": asked["tool_calls"]},
            {"role": "tool", "content": "18 C, sunny", "tool_call_id": call["id"]},
        ]
        answered = await client.execute("So?", stream=False, store=False, history=history, tools=[WEATHER])
    assert answered["response"] == double.answer
    turns = double.bodies[-1]["messages"]
    assert turns[1]["content"][-1] == {
        "cache_control": {"type": "ephemeral"},  # the end of the history before the prompt
        "type": "tool_use",
        "id": "toolu_double",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert turns[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_double",
        "content": "18 C, sunny",
    }


# -- errors ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_permanent(
    claude: AnthropicBackend, double: AnthropicDouble, status: int
) -> None:
    double.script = [(status, {})]
    with pytest.raises(PermanentModelError, match=f"HTTP {status}"):
        await collect(claude, ask(ChatMessage("user", "hi")))


@pytest.mark.anyio
async def test_wrong_key_is_permanent_and_never_shown(double: AnthropicDouble, home: Path) -> None:
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(
            ModelType.CLAUDE, SONNET, endpoint=double.url, api_key="sk-ant-wrong-key-1234"
        )
        with pytest.raises(Exception, match="Check the API key") as info:
            await client.execute("hi", stream=False)
    assert "sk-ant-wrong-key-1234" not in str(info.value)
    assert len(double.bodies) == 1  # permanent: not retried


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 529])
async def test_busy_with_a_short_retry_after_is_one_call_the_executor_retries(
    double: AnthropicDouble, home: Path, status: int
) -> None:
    double.script = [(status, {"retry-after": "0.2"})]
    backend = AnthropicBackend(SONNET, endpoint=double.url, api_key=SECRET)
    await backend.start()
    try:
        with pytest.raises(TransientModelError) as info:  # the backend itself sends once
            await collect(backend, ask(ChatMessage("user", "hi")))
    finally:
        await backend.aclose()
    assert info.value.retry_after == pytest.approx(0.2) and len(double.bodies) == 1
    double.script = [(status, {"retry-after": "0.2"})]
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=double.url, api_key=SECRET)
        result = await client.execute("hi", stream=False)
    assert result["response"] == double.answer and len(double.bodies) == 3


@pytest.mark.anyio
async def test_busy_with_a_long_retry_after_moves_on_at_once(
    claude: AnthropicBackend, double: AnthropicDouble
) -> None:
    double.script = [(429, {"retry-after": "600"})]
    with pytest.raises(TransientModelError, match="retry after 600s") as info:
        await collect(claude, ask(ChatMessage("user", "hi")))
    assert info.value.unreachable and len(double.bodies) == 1


@pytest.mark.anyio
async def test_overloaded_without_retry_after_is_transient_and_retried_by_the_executor(
    double: AnthropicDouble, home: Path
) -> None:
    double.script = [(529, {}), (529, {})]
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=double.url, api_key=SECRET)
        result = await client.execute("hi", stream=False)
    errors = [a["error"] for a in result["metrics"]["attempts"] if a["error"]]
    assert len(errors) == 2 and all("529" in e and "overloaded" in e for e in errors)
    assert result["response"] == double.answer


@pytest.mark.anyio
async def test_error_event_mid_stream_is_transient(claude: AnthropicBackend, double: AnthropicDouble) -> None:
    double.mode = "error_event"
    with pytest.raises(TransientModelError, match="overloaded_error"):
        await collect(claude, ask(ChatMessage("user", "hi")))


@pytest.mark.anyio
async def test_stream_without_message_stop_has_no_finish(
    claude: AnthropicBackend, double: AnthropicDouble
) -> None:
    double.mode = "truncated"
    chunks = await collect(claude, ask(ChatMessage("user", "hi")))
    assert chunks and all(c.finish_reason is None for c in chunks)


@pytest.mark.anyio
async def test_connection_reset_mid_answer(claude: AnthropicBackend, double: AnthropicDouble) -> None:
    double.mode = "kill"
    with pytest.raises(TransientModelError, match=r"during the answer|broke"):
        await collect(claude, ask(ChatMessage("user", "hi")))


@pytest.mark.anyio
async def test_unreachable_endpoint_falls_back_at_once(home: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    scripted = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[scripted], execution=FAST, preference="cloud-first") as client:
        await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=dead, api_key=SECRET)
        await client.hook_model("scripted", "local")
        result = await client.execute("hi", stream=False)
        health = client.model_health()[f"claude:{SONNET}"]
    assert result["model_id"] == "scripted:local"
    errors = [a["error"] for a in result["metrics"]["attempts"] if a["error"]]
    assert len(errors) == 1 and "cannot reach" in errors[0]  # no retry on this request
    assert health["status"] == "cooling"  # cooled at once


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


# -- health, keys, base URL --------------------------------------------------------------


def test_health_check_lists_models_without_spending_tokens(double: AnthropicDouble) -> None:
    backend = AnthropicBackend(SONNET, endpoint=double.url + "/v1/", api_key=SECRET)
    ok, detail = backend.health_check(5)
    assert ok and "GET /v1/models: HTTP 200" in detail and not double.bodies
    double.models_status = 529
    assert backend.health_check(5) == (False, "GET /v1/models: HTTP 529")
    double.models_status = 401
    assert backend.health_check(5)[0]  # it answers: the endpoint serves (the key is another matter)
    dead = AnthropicBackend(SONNET, endpoint=f"http://127.0.0.1:{free_port()}", api_key=SECRET)
    ok, detail = dead.health_check(2)
    assert not ok and "refused" in detail and SECRET not in detail


@pytest.mark.anyio
async def test_key_from_the_environment_and_base_url_from_the_sdk_variable(
    double: AnthropicDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", double.url)
    backend = AnthropicBackend(SONNET)
    await backend.start()
    chunks = await collect(backend, ask(ChatMessage("user", "hi")))
    await backend.aclose()
    assert chunks[-1].finish_reason == "stop" and backend.describe()["endpoint"] == double.url


@pytest.mark.anyio
async def test_missing_key_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        await AnthropicBackend(SONNET).start()


@pytest.mark.anyio
async def test_key_never_reaches_disk_or_reprs(
    double: AnthropicDouble, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    async with OblixClient(home=home) as client:
        await client.hook_model(ModelType.CLAUDE, SONNET, endpoint=double.url)
        result = await client.execute("Say hi.", stream=False)
        await client.export_session(result["session_id"], str(home / "export.json"))
        seen = repr(client) + repr(client.models) + json.dumps(result) + json.dumps(client.list_models())
        seen += json.dumps(client.get_model(ModelType.CLAUDE, SONNET))
    assert SECRET not in seen
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_without_the_anthropic_package_hook_model_names_the_extra(tmp_path: Path) -> None:
    script = (
        "import sys, asyncio\n"
        "sys.modules['anthropic'] = None  # as if oblix[anthropic] were not installed\n"
        "from oblix import OblixClient, ModelType\n"
        "async def main():\n"
        "    client = OblixClient()\n"
        "    try:\n"
        f"        await client.hook_model(ModelType.CLAUDE, {SONNET!r}, api_key='k')\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "    await client.shutdown()\n"
        "asyncio.run(main())\n"
    )
    env = os.environ | {"OBLIX_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert "pip install 'oblix[anthropic]'" in done.stdout, done.stdout + done.stderr
