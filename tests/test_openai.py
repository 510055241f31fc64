"""The OpenAI backend against a real OpenAI-compatible server (llama-cpp-python[server]).

The server serves the packaged Gemma 3 270M with the alpaca chat format (its default
format makes this base model answer with nothing).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from oblix import ModelType, OblixClient
from oblix_core.errors import (
    ConfigError,
    NoModelAvailableError,
    PermanentModelError,
    StreamInterruptedError,
    TransientModelError,
)
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_core.testing import ModelBackendContract, ScriptedPlugin
from oblix_llamacpp.packaged import packaged_model_path
from oblix_openai import OpenAIBackend
from tests.conftest import FAST
from tests.servers import LlamaServer
from tests.support.net import free_port

pytestmark = pytest.mark.llama
SECRET = "sk-oblix-test-SECRET-4242"


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    srv = LlamaServer(packaged_model_path(), api_key=SECRET).start()
    yield srv
    srv.kill()


def ask(text: str = "What is the capital of France?", max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", text),), temperature=0.0, max_tokens=max_tokens)


class TestOpenAIContract(ModelBackendContract):
    secret = SECRET

    @pytest.fixture
    async def backend(self, server: LlamaServer) -> AsyncIterator[OpenAIBackend]:
        backend = OpenAIBackend("gemma", endpoint=server.url, api_key=SECRET)
        await backend.start()
        yield backend
        await backend.aclose()


@pytest.mark.anyio
async def test_streams_and_finishes(server: LlamaServer) -> None:
    backend = OpenAIBackend("gemma", endpoint=server.url, api_key=SECRET, context_window=2048)
    await backend.start()
    chunks = [c async for c in backend.stream(ask())]
    assert "Paris" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason in ("stop", "length")
    await backend.aclose()


@pytest.mark.anyio
async def test_wrong_key_is_permanent_and_not_retried(server: LlamaServer, home: Path) -> None:
    backend = OpenAIBackend("gemma", endpoint=server.url, api_key="sk-wrong")
    await backend.start()
    with pytest.raises(PermanentModelError, match="401"):
        async for _ in backend.stream(ask()):
            pass
    await backend.aclose()  # an HTTP client left open is closed by the GC later, in another loop
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(ModelType.OPENAI, "gemma", endpoint=server.url, api_key="sk-wrong")
        with pytest.raises(NoModelAvailableError, match="Check the API key") as info:
            await client.execute("hi", stream=False)
    assert [a["model_id"] for a in info.value.attempts] == ["openai:gemma"]  # one attempt, no retries


@pytest.mark.anyio
async def test_missing_key_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await OpenAIBackend("gpt-4o-mini").start()
    assert OpenAIBackend("gpt-4o-mini").context_window == 128_000


@pytest.mark.anyio
async def test_key_never_reaches_disk_or_reprs(
    server: LlamaServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    async with OblixClient(home=home) as client:
        await client.hook_model(ModelType.OPENAI, "gemma", endpoint=server.url)
        result = await client.execute("Say hi.", stream=False, max_tokens=8)
        await client.export_session(result["session_id"], str(home / "export.json"))
        assert SECRET not in repr(client) + repr(client.models) + json.dumps(result)
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.anyio
async def test_server_down_before_request_falls_back_to_local(home: Path) -> None:
    scripted = ScriptedPlugin()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with OblixClient(home=home, plugins=[scripted], execution=FAST, preference="cloud-first") as client:
        await client.hook_model(ModelType.OPENAI, "gemma", endpoint=dead)
        await client.hook_model("scripted", "local")
        result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:local"
    errors = [a["error"] for a in result["metrics"]["attempts"] if a["error"]]
    # refused: the endpoint cannot be reached, so no retry on this request, then fallback
    assert len(errors) == 1 and "cannot reach" in errors[0] and "refused" in errors[0]


@pytest.mark.anyio
async def test_server_killed_mid_stream(tmp_path: Path) -> None:
    srv = LlamaServer(packaged_model_path()).start()
    backend = OpenAIBackend("gemma", endpoint=srv.url)
    await backend.start()
    received: list[str] = []
    try:
        with pytest.raises(TransientModelError, match=r"during the answer|without a finish reason"):
            async for chunk in backend.stream(ask("Write a very long story about a knight.", 400)):
                if chunk.text:
                    received.append(chunk.text)
                if len(received) == 3:
                    await anyio.to_thread.run_sync(srv.kill)
    finally:
        srv.kill()
        await backend.aclose()
    assert len(received) >= 3


@pytest.mark.anyio
async def test_mid_stream_kill_through_the_client_is_an_interrupted_answer(home: Path) -> None:
    srv = LlamaServer(packaged_model_path()).start()
    async with OblixClient(home=home, execution=FAST) as client:
        await client.hook_model(ModelType.OPENAI, "gemma", endpoint=srv.url)
        sid = await client.create_session()
        try:
            with pytest.raises(StreamInterruptedError) as info:
                async with client.stream(
                    "Write a very long story about a knight.", session_id=sid, max_tokens=400
                ) as s:
                    async for i, _ in _enumerate(s):
                        if i == 2:
                            await anyio.to_thread.run_sync(srv.kill)
        finally:
            srv.kill()
        assert info.value.partial
        stored = client.load_session(sid)["messages"]
    assert stored[-1]["content"] == info.value.partial and stored[-1]["metrics"]["interrupted"] is True


async def _enumerate(stream):  # type: ignore[no-untyped-def]
    i = 0
    async for item in stream:
        yield i, item
        i += 1


@pytest.mark.anyio
async def test_the_sdk_stream_still_keeps_its_event_generator() -> None:
    """The one private attribute the backend relies on (``AsyncStream._iterator``), pinned: an SDK
    release that drops it fails here, not as an unclosed generator in production."""
    import inspect

    import openai

    from oblix_openai.backend import _close_stream
    from tests.openai_loopback import LoopbackOpenAI

    with LoopbackOpenAI() as server:
        client = openai.AsyncOpenAI(api_key="sk-pin-test", base_url=f"http://127.0.0.1:{server.port}/v1")
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        first = await anext(stream)
        assert first.choices[0].delta is not None
        assert inspect.isasyncgen(stream._iterator)
        await _close_stream(stream)
        assert stream._iterator.ag_frame is None  # finished: closed, nothing left for the GC
        await client.close()
