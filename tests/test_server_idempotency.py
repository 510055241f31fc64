"""``Idempotency-Key`` on ``POST /v1/chat/completions``, with the official ``openai`` client
against a real ``oblix server`` process: replay (whole and streamed), mismatch 422,
in-flight 409 with ``Retry-After``, keys scoped to the API key, nothing counted twice.

The models are the test doubles of ``tests/server_process.py`` (``paced``: answers
``[<messages received>] t0 t1 ...`` at a set pace).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from starlette.datastructures import Headers

from oblix_core.client import OblixClient
from oblix_server.calls import idempotency_key
from tests.server_process import OblixServer, model_toml, write_plugin_dist

pytestmark = pytest.mark.slow  # one oblix server process for the file
KEY = "sk-oblix-idempotency-test-41c2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OblixServer]:
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        model_toml("paced", "local", delay=0.01)
        + model_toml("paced", "slow", tokens=20, delay=0.1)
        + "[execution]\nidempotency_wait = 0.5\n"
    )
    with OblixServer(home, plugin_dir=plugin_dir, api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=2)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def replays(server: OblixServer) -> float:
    text = httpx.get(f"{server.root}/metrics", headers=server.auth, timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("oblix_replays_total"))
    return float(line.split()[-1])


def test_a_repeat_is_replayed_and_stored_once(client: openai.OpenAI, server: OblixServer) -> None:
    before = replays(server)
    headers = {"Idempotency-Key": "turn-1", "X-Oblix-Session-Id": "new"}
    first = client.chat.completions.with_raw_response.create(
        model="paced:local", messages=user("hello"), max_tokens=3, extra_headers=headers
    )
    again = client.chat.completions.with_raw_response.create(
        model="paced:local", messages=user("hello"), max_tokens=3, extra_headers=headers
    )
    session_id = first.headers["X-Oblix-Session-Id"]
    assert again.headers["X-Oblix-Session-Id"] == session_id
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.parse().id == first.parse().id
    stored = OblixClient(home=server.home).load_session(session_id)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert replays(server) == before + 1
    streamed = client.chat.completions.create(
        model="paced:local", messages=user("hello"), max_tokens=3, extra_headers=headers, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == first.parse().choices[0].message.content
    assert len(OblixClient(home=server.home).load_session(session_id)["messages"]) == 2


def test_another_body_with_the_key_is_422(client: openai.OpenAI) -> None:
    headers = {"Idempotency-Key": "turn-2"}
    client.chat.completions.create(
        model="paced:local", messages=user("one"), max_tokens=2, extra_headers=headers
    )
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(
            model="paced:local", messages=user("two"), max_tokens=2, extra_headers=headers
        )
    assert caught.value.code == "idempotency_key_mismatch" and "prompt" in str(caught.value)


def test_a_repeat_while_the_first_runs_is_409_with_retry_after(server: OblixServer) -> None:
    body = {"model": "paced:slow", "messages": user("long"), "max_tokens": 20}
    headers = server.auth | {"Idempotency-Key": "turn-3"}
    url = f"{server.base_url}/chat/completions"
    first: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: first.append(httpx.post(url, json=body, headers=headers, timeout=60))
    )
    worker.start()
    time.sleep(0.4)
    second = httpx.post(url, json=body, headers=headers, timeout=60)
    worker.join()
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "idempotency_key_in_use"
    assert int(second.headers["Retry-After"]) >= 1
    assert first[0].status_code == 200
    third = httpx.post(url, json=body, headers=headers, timeout=60)  # now replayed
    assert (
        third.json()["choices"][0]["message"]["content"]
        == first[0].json()["choices"][0]["message"]["content"]
    )


def test_bad_keys_are_400(server: OblixServer) -> None:
    url = f"{server.base_url}/chat/completions"
    body = {"model": "paced:local", "messages": user("x")}
    for value in ("", "x" * 256):
        response = httpx.post(url, json=body, headers=server.auth | {"Idempotency-Key": value}, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["param"] == "Idempotency-Key"


def test_keys_are_scoped_to_the_api_key_that_sent_them() -> None:
    alice = idempotency_key(Headers({"authorization": "Bearer alice-key", "idempotency-key": "k"}))
    bob = idempotency_key(Headers({"authorization": "Bearer bob-key", "idempotency-key": "k"}))
    assert alice is not None and bob is not None and alice != bob
    assert alice == idempotency_key(Headers({"authorization": "Bearer alice-key", "idempotency-key": "k"}))
    assert idempotency_key(Headers({})) is None
    assert "alice-key" not in alice  # the API key itself is never part of what is stored


def test_usage_counts_a_replayed_request_once(
    client: openai.OpenAI, server: OblixServer, tmp_path: Path
) -> None:
    def requests() -> int:
        got = httpx.get(f"{server.base_url}/oblix/usage?since=1d", headers=server.auth, timeout=10).json()
        return int(got["total"]["requests"])

    before = requests()
    headers = {"Idempotency-Key": "turn-usage"}
    for _ in range(3):
        client.chat.completions.create(
            model="paced:local", messages=user("u"), max_tokens=2, extra_headers=headers
        )
    assert requests() == before + 1
