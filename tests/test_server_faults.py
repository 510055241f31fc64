"""``oblix server`` under load and faults: concurrency, the queue, disconnects, failover, privacy.

Real server processes (``tests/server_process.py``) with test double models, and a
loopback OpenAI-compatible "cloud" process (a protocol double, not OpenAI) that a test
can SIGKILL before or during an answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from oblix_core.client import OblixClient
from tests.server_process import ROOT, Cloud, OblixServer, model_toml, write_plugin_dist
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def config(home: Path, *models: str, preference: str = "local-first") -> None:
    (home / "config.toml").write_text(f'[routing]\npreference = "{preference}"\n\n' + "".join(models))


def stored_session(home: Path, **metadata: object) -> str:
    """A session created through the Python API, in the store the server processes use."""

    async def create() -> str:
        async with OblixClient(home=home) as client:
            return await client.create_session(metadata=metadata)

    return anyio.run(create)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def api(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    with Cloud(tokens=60, delay=0.05, first_delay=0.0) as srv:
        yield srv


def test_twenty_concurrent_streaming_clients(home: Path, plugin_dir: Path) -> None:
    config(home, model_toml("paced", "local", delay=0.02, tokens=10))
    with OblixServer(home, plugin_dir=plugin_dir) as server:

        def one(i: int) -> tuple[str, set[str]]:
            stream = api(server).chat.completions.create(
                model="auto", messages=user(f"client {i}"), stream=True
            )
            chunks = list(stream)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), {
                c.id for c in chunks
            }

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(one, range(20)))
        expected = "[1]" + "".join(f" t{i}" for i in range(10))
        assert [text for text, _ in answers] == [expected] * 20
        assert len({next(iter(ids)) for _, ids in answers}) == 20  # one id per stream, all different
        assert server.health()["in_flight"] == 0


def test_beyond_the_queue_429_with_retry_after(home: Path, plugin_dir: Path) -> None:
    config(home, model_toml("paced", "local", delay=0.1, tokens=100))
    args = ("--max-concurrency", "1", "--queue-size", "1", "--queue-timeout", "2")
    with OblixServer(home, *args, plugin_dir=plugin_dir) as server:
        body = {"model": "auto", "messages": user("long"), "stream": True}
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as running:
            lines = running.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # the one slot is taken
            queued = threading.Thread(
                target=lambda: httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
            )
            queued.start()
            assert wait_until(lambda: server.health()["waiting"] == 1, 5)
            with pytest.raises(openai.RateLimitError) as caught:
                api(server).chat.completions.create(model="auto", messages=user("one more"))
            assert caught.value.response.headers["Retry-After"].isdigit()
            assert caught.value.code == "server_busy"
            queued.join()
        assert server.process is not None and server.process.poll() is None  # never a crash


def test_client_disconnect_stops_generation(home: Path, plugin_dir: Path, cloud: Cloud) -> None:
    config(
        home,
        model_toml("paced", "local", delay=0.05, tokens=1000),
        model_toml("openai", "cloud", endpoint=cloud.base_url),
    )
    with OblixServer(home, plugin_dir=plugin_dir) as server:
        for model in ("paced:local", "openai:cloud"):
            stream = api(server).chat.completions.create(model=model, messages=user("go on"), stream=True)
            chunks = iter(stream)
            next(chunks), next(chunks)
            assert any(m["busy"] for m in server.health()["models"]) or cloud.stats()["open"] == 1
            stream.close()  # the client goes away mid-answer
            assert wait_until(lambda: not any(m["busy"] for m in server.health()["models"]), 1.0)
            assert wait_until(lambda: cloud.stats()["open"] == 0, 1.0)  # the upstream request is closed
        assert cloud.stats()["requests"] == 1


def test_cloud_killed_before_first_token_local_answers(home: Path, plugin_dir: Path) -> None:
    with Cloud(tokens=3, first_delay=30) as cloud:
        config(
            home,
            model_toml("openai", "cloud", endpoint=cloud.base_url),
            model_toml("paced", "local", tokens=2),
            preference="cloud-first",
        )
        with OblixServer(home, plugin_dir=plugin_dir) as server:
            result: dict[str, object] = {}

            def ask() -> None:
                result["raw"] = api(server).chat.completions.with_raw_response.create(
                    model="auto", messages=user("hi"), stream=True
                )
                result["chunks"] = list(result["raw"].parse())  # type: ignore[attr-defined]

            asking = threading.Thread(target=ask)
            asking.start()
            assert wait_until(lambda: cloud.stats()["requests"] == 1, 10)  # the cloud has the request
            cloud.kill()  # ... and dies before its first token
            asking.join(30)
    raw = result["raw"]
    assert raw.headers["X-Oblix-Model"] == "paced:local"  # type: ignore[attr-defined]
    chunks = result["chunks"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[1] t0 t1"  # type: ignore[attr-defined]


def test_cloud_killed_mid_stream_error_event_and_partial_stored(home: Path, plugin_dir: Path) -> None:
    with Cloud(tokens=200, delay=0.05) as cloud:
        config(
            home,
            model_toml("openai", "cloud", endpoint=cloud.base_url),
            model_toml("paced", "local"),
            preference="cloud-first",
        )
        with OblixServer(home, plugin_dir=plugin_dir) as server:
            raw = api(server).chat.completions.with_raw_response.create(
                model="auto",
                messages=user("tell me"),
                stream=True,
                extra_headers={"X-Oblix-Session-Id": "new"},
            )
            assert raw.headers["X-Oblix-Model"] == "openai:cloud"
            session_id = raw.headers["X-Oblix-Session-Id"]
            received = []
            with pytest.raises(openai.APIError) as caught:
                for chunk in raw.parse():
                    received.append(chunk.choices[0].delta.content or "")
                    if len(received) == 3:
                        cloud.kill()
            assert "failed after streaming part of its answer" in caught.value.message
            assert caught.value.body["code"] == "stream_interrupted"  # type: ignore[index]
    messages = OblixClient(home=home).load_session(session_id)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["metrics"]["interrupted"] is True
    assert messages[1]["content"] == "".join(received) and messages[1]["model_id"] == "openai:cloud"


def test_local_only_session_never_reaches_the_cloud(home: Path, plugin_dir: Path, cloud: Cloud) -> None:
    config(
        home,
        model_toml("openai", "cloud", endpoint=cloud.base_url),
        model_toml("paced", "local", tokens=1),
        preference="cloud-first",
    )
    session_id = stored_session(home, local_only=True)
    with OblixServer(home, plugin_dir=plugin_dir) as server:
        client = api(server)
        headers = {"X-Oblix-Session-Id": session_id}
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=user("private"), extra_headers=headers
        )
        assert raw.headers["X-Oblix-Model"] == "paced:local" and raw.headers["X-Oblix-Route"] == "local-only"
        stream = client.chat.completions.create(
            model="auto", messages=user("still private"), extra_headers=headers, stream=True
        )
        assert {c.model for c in stream} == {"paced:local"}
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.chat.completions.create(
                model="openai:cloud", messages=user("leak?"), extra_headers=headers
            )
        assert caught.value.code == "local_only"
        header = {"X-Oblix-Local-Only": "true"}
        answer = client.chat.completions.create(model="auto", messages=user("hush"), extra_headers=header)
        assert answer.model == "paced:local"
        assert client.chat.completions.create(model="auto", messages=user("public")).model == "openai:cloud"
    assert cloud.stats()["requests"] == 1  # only the last, public request


def test_local_only_header_fails_closed(home: Path, plugin_dir: Path, cloud: Cloud) -> None:
    """Only a clear "no" lets a request reach the cloud; an unclear value is a 400, nothing sent."""
    config(
        home,
        model_toml("openai", "cloud", endpoint=cloud.base_url),
        model_toml("paced", "local", tokens=1),
        preference="cloud-first",
    )
    body = {"model": "auto", "messages": user("private")}
    with OblixServer(home, plugin_dir=plugin_dir) as server:

        def send(*values: str) -> httpx.Response:
            headers = [("X-Oblix-Local-Only", v) for v in values]
            return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=30)

        for value in ("y", "t", "Y", "yes", "1", "on", "TRUE"):
            answer = send(value)
            assert answer.status_code == 200 and answer.headers["X-Oblix-Model"] == "paced:local", value
        repeated = send("false", "true")  # one header saying yes is enough
        assert repeated.status_code == 200 and repeated.headers["X-Oblix-Model"] == "paced:local"
        for value in ("enabled", "required", "local", "TRUE!", "", "true, false", "2"):
            refused = send(value)
            assert refused.status_code == 400, (value, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "invalid_header" and error["param"] == "X-Oblix-Local-Only"
            assert "must be true or false" in error["message"] and "Nothing was sent" in error["message"]
        for value in ("0", "false", "No", "off"):
            assert send(value).headers["X-Oblix-Model"] == "openai:cloud", value
    assert cloud.stats()["requests"] == 4  # only the four clear "no"s


def test_session_shared_by_two_server_processes(home: Path, plugin_dir: Path) -> None:
    config(home, model_toml("paced", "local", tokens=1))
    with (
        OblixServer(home, plugin_dir=plugin_dir) as one,
        OblixServer(home, "--store-all", plugin_dir=plugin_dir) as two,
    ):
        first = api(one).chat.completions.with_raw_response.create(
            model="auto", messages=user("hello"), extra_headers={"X-Oblix-Session-Id": "new"}
        )
        session_id = first.headers["X-Oblix-Session-Id"]
        second = api(two).chat.completions.create(
            model="auto", messages=user("again"), extra_headers={"X-Oblix-Session-Id": session_id}
        )
        assert second.choices[0].message.content == "[3] t0"  # the history written by the other process
        stored_all = api(two).chat.completions.with_raw_response.create(
            model="auto", messages=user("keep me")
        )
        assert stored_all.headers["X-Oblix-Session-Id"] != session_id  # --store-all: a new stored session
    sessions = OblixClient(home=home).list_sessions()
    assert sorted(s["message_count"] for s in sessions) == [2, 4]


def test_public_bind_without_key_is_refused(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OBLIX_SERVER_API_KEY"} | {"OBLIX_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "oblix_core", "server", "--host", "0.0.0.0", "--port", "9"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        "Refusing to listen on 0.0.0.0 without an API key" in done.stderr and "Traceback" not in done.stderr
    )


def test_sigterm_shuts_the_client_down_before_the_process_exits(home: Path, plugin_dir: Path) -> None:
    """uvicorn re-raises the SIGTERM it shut down on: the process must exit through Python
    (status 143, ``client.shutdown()`` run: usage written, models and store closed), not be
    killed by the signal's default action (status -15)."""
    import signal

    config(home, model_toml("paced", "local", tokens=1))
    server = OblixServer(home, plugin_dir=plugin_dir).start()
    assert server.process is not None
    process = server.process
    answer = api(server).chat.completions.create(model="auto", messages=user("hello"))
    assert answer.choices[0].message.content
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(30) == 128 + signal.SIGTERM, server.log()
    assert "Traceback" not in server.log()
    usage = OblixClient(home=home).usage(since="1d")
    assert usage["total"]["requests"] == 1
