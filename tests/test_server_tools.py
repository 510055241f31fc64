"""Tool calling through ``oblix server`` with the official ``openai`` client.

The server is a real process; its tool-capable model is the OpenAI backend pointed at a
loopback OpenAI-compatible double (``tests/openai_loopback.py``, mode ``tool``) that
calls the request's first tool, then answers once it gets the tool's result. A local
test-double model without tool support is hooked first and must be skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.openai_loopback import LoopbackOpenAI
from tests.server_process import OblixServer, model_toml, write_plugin_dist

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def cloud() -> Iterator[LoopbackOpenAI]:
    with LoopbackOpenAI("tool") as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cloud: LoopbackOpenAI) -> Iterator[OblixServer]:
    home = tmp_path_factory.mktemp("home")
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    (home / "config.toml").write_text(
        model_toml("scripted", "echo")
        + model_toml("openai", "gpt-tools", endpoint=cloud.url, api_key="sk-test-000")
    )
    with OblixServer(home, plugin_dir=plugin_dir) as running:
        yield running


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _ask(client: openai.OpenAI, **kwargs: object) -> object:
    return client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], **kwargs
    )


def test_a_tool_call_comes_back_whole(client: openai.OpenAI, cloud: LoopbackOpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]
    )
    answer = raw.parse()
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id == "call_1" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert raw.headers["X-Oblix-Model"] == "openai:gpt-tools" == answer.model
    assert cloud.bodies[-1]["tools"] == [WEATHER]


def test_a_tool_call_streams_and_the_result_goes_back(client: openai.OpenAI, cloud: LoopbackOpenAI) -> None:
    chunks = list(_ask(client, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    calls = [c for chunk in chunks if chunk.choices for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and len({chunk.id for chunk in chunks}) == 1
    follow = client.chat.completions.create(
        model="auto",
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude_none=True)]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
            {"role": "user", "content": "So, what should I wear?"},
        ],
    )
    assert follow.choices[0].message.content == "Hello from loopback"
    sent = cloud.bodies[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == {
        "role": "tool",
        "content": "sunny, 21 C",
        "tool_call_id": "call_1",
    }


def test_tools_forced_on_a_model_without_tools_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="scripted:echo", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]
        )
    assert caught.value.code == "tools_not_supported"


def test_tools_with_a_stored_session_are_refused_clearly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _ask(client, extra_headers={"X-Oblix-Session-Id": "new"})
    assert caught.value.code == "tools_with_session"
