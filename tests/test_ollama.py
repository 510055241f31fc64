"""The Ollama backend with the official ``ollama`` client against a protocol double.

The double (``tests/ollama_double.py``) is a test double of the Ollama server, used
because the Ollama binary cannot be installed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from oblix import ModelType, OblixClient
from oblix_core.errors import ConfigError, OblixError, PermanentModelError, TransientModelError
from oblix_core.models import ChatMessage, GenerationRequest
from oblix_core.testing import ModelBackendContract
from oblix_ollama import OllamaBackend
from tests.conftest import FAST
from tests.ollama_double import OllamaDouble
from tests.servers import free_port


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
