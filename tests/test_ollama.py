"""The Ollama backend with the official ``ollama`` client against a protocol double.

The double (``tests/ollama_double.py``) is a test double of the Ollama server, used
because the Ollama binary cannot be installed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix import ModelType, OblixClient
from oblix_core.errors import ConfigError, OblixError, PermanentModelError, TransientModelError
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_core.testing import ModelBackendContract, ScriptedPlugin
from oblix_ollama import OllamaBackend
from tests.conftest import FAST
from tests.ollama_double import OllamaDouble
from tests.support.net import free_port


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double


def ask(text: str = "hello there", max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", text),), temperature=0.2, max_tokens=max_tokens)


class TestOllamaContract(ModelBackendContract):
    @pytest.fixture
    async def backend(self, ollama: OllamaDouble) -> AsyncIterator[OllamaBackend]:
        backend = OllamaBackend("llama2:latest", endpoint=ollama.url)
        await backend.start()
        yield backend
        await backend.aclose()


@pytest.mark.anyio
async def test_streams_with_token_counts_and_options(ollama: OllamaDouble) -> None:
    backend = OllamaBackend("llama2", endpoint=ollama.url, num_ctx=1024)
    await backend.start()
    assert backend.model_id == "ollama:llama2" and backend.context_window == 1024
    chunks = [c async for c in backend.stream(ask("one two three four", max_tokens=3))]
    assert "".join(c.text for c in chunks) == "Echo: one two"
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 3
    sent = ollama.requests[-1]
    assert sent["options"] == {"temperature": 0.2, "num_predict": 3, "num_ctx": 1024}
    await backend.aclose()


@pytest.mark.anyio
async def test_context_window_from_show(ollama: OllamaDouble) -> None:
    ollama.models["mistral:7b"] = 32768
    ollama.models["tiny:1b"] = 4096
    backend = OllamaBackend("mistral:7b", endpoint=ollama.url)
    await backend.start()
    assert backend.context_window == 8192  # the trained 32768, capped: Ollama allocates num_ctx
    tiny = OllamaBackend("tiny:1b", endpoint=ollama.url)
    await tiny.start()
    assert tiny.context_window == 4096
    chunks = [c async for c in backend.stream(GenerationRequest((ChatMessage("user", "hi"),)))]
    assert chunks[-1].finish_reason is not None
    assert ollama.requests[-1]["options"]["num_ctx"] == 8192  # always explicit: no silent truncation
    await backend.aclose()
    await tiny.aclose()


@pytest.mark.anyio
async def test_missing_model_says_how_to_pull(ollama: OllamaDouble) -> None:
    with pytest.raises(ConfigError, match="ollama pull phi3"):
        await OllamaBackend("phi3", endpoint=ollama.url).start()


@pytest.mark.anyio
async def test_unreachable_server() -> None:
    with pytest.raises(OblixError, match="Cannot reach Ollama"):
        await OllamaBackend("llama2", endpoint=f"http://127.0.0.1:{free_port()}").start()


@pytest.mark.anyio
async def test_host_from_environment(ollama: OllamaDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    backend = OllamaBackend("llama2")
    await backend.start()
    assert backend.describe()["endpoint"] == ollama.url
    await backend.aclose()


@pytest.mark.anyio
async def test_errors_are_classified(ollama: OllamaDouble) -> None:
    backend = OllamaBackend("llama2", endpoint=ollama.url)
    await backend.start()
    ollama.fail_next = [503]
    with pytest.raises(TransientModelError, match="503"):
        [c async for c in backend.stream(ask())]
    ollama.fail_next = [400]
    with pytest.raises(PermanentModelError, match="400"):
        [c async for c in backend.stream(ask())]
    ollama.drop_after = 2
    with pytest.raises(TransientModelError):
        [c async for c in backend.stream(ask("a b c d e f"))]
    await backend.aclose()


@pytest.mark.anyio
async def test_through_the_client_with_retry(
    ollama: OllamaDouble, home: Path, make_client: Callable[..., OblixClient]
) -> None:
    client = make_client(home=home, execution=FAST)
    await client.hook_model(ModelType.OLLAMA, "llama2:latest", endpoint=ollama.url)
    ollama.fail_next = [500, 429]
    result = await client.execute("hi there", stream=False)
    assert result["response"] == "Echo: hi there" and result["model_id"] == "ollama:llama2:latest"
    assert result["metrics"]["output_tokens"] == 3 and result["metrics"]["tokens_estimated"] is False
    assert len(result["metrics"]["attempts"]) == 3


@pytest.mark.anyio
async def test_a_cold_model_is_warming_until_its_first_token(ollama: OllamaDouble) -> None:
    ollama.loaded.clear()  # nothing in memory: the next request loads the weights
    ollama.load_delay = 0.5
    backend = OllamaBackend("llama2:latest", endpoint=ollama.url)
    await backend.start()
    assert not backend.warming
    seen: list[bool] = []

    async def watch() -> None:
        await anyio.sleep(0.2)
        seen.append(backend.warming)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        chunks = [c async for c in backend.stream(GenerationRequest((ChatMessage("user", "hi"),)))]
    assert seen == [True] and not backend.warming and chunks[-1].finish_reason
    # loaded now (kept for keep_alive): the next request is not a cold start
    warm = OllamaBackend("llama2:latest", endpoint=ollama.url, keep_alive="10m")
    await warm.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        [c async for c in warm.stream(GenerationRequest((ChatMessage("user", "hi"),)))]
    assert seen == [True, False]
    await backend.aclose()
    await warm.aclose()


@pytest.mark.anyio
async def test_a_warming_local_model_lets_a_ready_one_answer(
    ollama: OllamaDouble, home: Path, make_client: Callable[..., OblixClient]
) -> None:
    ollama.loaded.clear()
    ollama.load_delay = 1.0
    client = make_client(home=home, plugins=[ScriptedPlugin()], execution=FAST)
    await client.hook_model(ModelType.OLLAMA, "llama2:latest", endpoint=ollama.url)
    await client.hook_model("scripted", "ready", local=False)
    results: dict[str, Any] = {}

    async def cold() -> None:
        results["cold"] = await client.execute("first", stream=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cold)
        await anyio.sleep(0.3)
        results["meanwhile"] = await client.execute("meanwhile", stream=False)
    assert results["cold"]["model_id"] == "ollama:llama2:latest"  # waited for the load, not failed
    assert results["meanwhile"]["model_id"] == "scripted:ready"
    assert results["meanwhile"]["routing_decision"]["rule"] == "local-warming"


def test_keep_alive_durations() -> None:
    from oblix_ollama.backend import keep_alive_seconds

    assert keep_alive_seconds(None) == 300 and keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds("90s") == 90 and keep_alive_seconds(-1) == float("inf")
    with pytest.raises(ConfigError):
        keep_alive_seconds("soon")
