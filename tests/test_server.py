"""``oblix server`` with the official ``openai`` client: shapes, sessions, models, errors, auth.

One real server process for the module, on a free loopback port, with two test double
models registered by a plugin package (see ``tests/server_process.py``): ``paced:local``
(answers ``[<messages it received>] t0 t1 ...``) and ``scripted:echo``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from oblix_core.client import OblixClient
from tests.server_process import OblixServer, model_toml, write_plugin_dist

KEY = "sk-oblix-server-test-7f3a"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> Iterator[OblixServer]:
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        model_toml("paced", "local", delay=0.01) + model_toml("scripted", "echo", local=False)
    )
    with OblixServer(home, "--max-body-bytes", "65536", plugin_dir=plugin_dir, api_key=KEY) as srv:
        yield srv
    assert KEY not in srv.log()


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_whole_answer(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=user("hi"))
    answer = raw.parse()
    assert answer.model == "paced:local" and answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "[1] t0 t1 t2 t3 t4"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.model_extra == {"oblix_estimated": True}  # the paced model reports no usage
    assert raw.headers["X-Oblix-Model"] == "paced:local"
    assert raw.headers["X-Oblix-Route"] == "preference"
    assert answer.id == "chatcmpl-" + raw.headers["X-Oblix-Request-Id"].removeprefix("req_")
    assert "X-Oblix-Session-Id" not in raw.headers  # stateless


def test_stream_shape_chunk_by_chunk(client: openai.OpenAI, server: OblixServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=user("hi"),
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    assert raw.headers["X-Oblix-Model"] == "paced:local" and raw.headers["X-Oblix-Request-Id"]
    chunks = list(raw.parse())
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"paced:local"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    with_choices = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in with_choices] == [None] * 4 + ["stop"]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == "[1] t0 t1 t2"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens > 0 and usage_chunk.usage.model_extra == {
        "oblix_estimated": True
    }
    assert all(c.usage is None for c in chunks[:-1])
    # on the wire: SSE data lines ending with [DONE]; no usage chunk unless asked
    body = {"model": "auto", "messages": user("hi"), "stream": True, "max_tokens": 1}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=server.auth) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in events)


def test_models_and_health(client: openai.OpenAI, server: OblixServer) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"auto", "paced:local", "scripted:echo"}
    assert (
        models["paced:local"].owned_by == "paced" and models["paced:local"].model_extra["locality"] == "local"
    )
    assert models["scripted:echo"].model_extra["locality"] == "cloud"
    assert models["auto"].owned_by == "oblix"
    assert client.models.retrieve("paced:local").id == "paced:local"
    health = server.health()
    assert health["status"] == "ok" and {m["id"] for m in health["models"]} == {
        "paced:local",
        "scripted:echo",
    }
    anonymous = httpx.get(f"{server.root}/health")  # open to probes, without the details
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}


def test_forced_model_and_unknown_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="scripted:echo", messages=user("hey"))
    assert raw.parse().choices[0].message.content == "echo: hey"
    assert raw.headers["X-Oblix-Model"] == "scripted:echo" and raw.headers["X-Oblix-Route"] == "explicit"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nothing", messages=user("hi"))
    assert caught.value.code == "model_not_found" and "paced:local" in caught.value.message
    assert caught.value.response.headers["X-Oblix-Model"] == "none"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nothing")


def test_stateless_history_and_system_prompt(client: openai.OpenAI, server: OblixServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    answer = client.chat.completions.create(model="auto", messages=messages, max_tokens=1)
    assert answer.choices[0].message.content == "[4] t0"  # system + history + prompt reached the model
    assert OblixClient(home=server.home).list_sessions() == []  # nothing stored


def test_session_continued_over_http(client: openai.OpenAI, server: OblixServer) -> None:
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=user("remember me"), max_tokens=1, extra_headers={"X-Oblix-Session-Id": "new"}
    )
    session_id = first.headers["X-Oblix-Session-Id"]
    second = client.chat.completions.with_raw_response.create(
        model="auto", messages=user("again"), max_tokens=1, extra_headers={"X-Oblix-Session-Id": session_id}
    )
    assert second.headers["X-Oblix-Session-Id"] == session_id
    assert second.parse().choices[0].message.content == "[3] t0"  # stored history + the new message
    stored = OblixClient(home=server.home).load_session(session_id)
    assert [m["content"] for m in stored["messages"]] == ["remember me", "[1] t0", "again", "[3] t0"]
    assert stored["messages"][-1]["model_id"] == "paced:local"
    with pytest.raises(openai.UnprocessableEntityError, match="send only the new user message"):
        client.chat.completions.create(
            model="auto",
            messages=[*user("a"), {"role": "assistant", "content": "b"}, *user("c")],
            extra_headers={"X-Oblix-Session-Id": session_id},
        )
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="auto", messages=user("hi"), extra_headers={"X-Oblix-Session-Id": "no-such-session"}
        )
    assert caught.value.code == "session_not_found"
    with pytest.raises(openai.BadRequestError, match="Invalid session id"):
        client.chat.completions.create(
            model="auto", messages=user("hi"), extra_headers={"X-Oblix-Session-Id": "../../etc"}
        )


def post(server: OblixServer, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    merged = {"Content-Type": "application/json"} | server.auth | (headers or {})
    return httpx.post(f"{server.base_url}/chat/completions", content=content, headers=merged, timeout=30)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Oblix-Request-Id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    if code:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{not json", 400, None),
        ("[1, 2]", 400, None),
        ('{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        ('{"model": "auto"}', 400, "messages"),
        ('{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        ('{"model": "auto", "messages": "hi"}', 400, "messages"),
        ('{"model": "auto", "messages": [{"content": "hi"}]}', 400, "messages[0].role"),
        ('{"model": "auto", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
        (
            '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            400,
            "stream",
        ),
        (
            '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}',
            400,
            "max_tokens",
        ),
        (
            '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
            422,
            "temperature",
        ),
        ('{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 422, "n"),
        ('{"model": "auto", "messages": []}', 422, "messages"),
        ('{"model": "auto", "messages": [{"role": "assistant", "content": "hi"}]}', 422, "messages"),
    ],
)
def test_invalid_requests(server: OblixServer, body: str, status: int, param: str | None) -> None:
    error = assert_openai_error(post(server, body), status)
    assert error["param"] == param


def test_tools_without_a_capable_model_are_refused(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="auto", messages=user("time?"), tools=[tool])  # type: ignore[list-item]
    assert caught.value.code == "tools_not_supported" and "paced:local" in caught.value.message


def test_oversized_body(server: OblixServer) -> None:
    big = json.dumps({"model": "auto", "messages": user("x" * 70_000)})
    assert_openai_error(post(server, big), 413, "request_too_large")


def test_missing_and_wrong_key(server: OblixServer) -> None:
    body = json.dumps({"model": "auto", "messages": user("hi")})
    missing = post(server, body, {"Authorization": ""})
    assert_openai_error(missing, 401, "missing_api_key")
    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="auto", messages=user("hi"))
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert_openai_error(httpx.get(f"{server.base_url}/nowhere", headers=server.auth), 404)
    assert_openai_error(httpx.get(f"{server.base_url}/chat/completions", headers=server.auth), 405)
