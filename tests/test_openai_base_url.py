"""``$OPENAI_BASE_URL``: where the openai SDK sends requests is also what the OpenAI backend
describes, health-checks and has the connectivity agent probe (not api.openai.com).

The server is ``tests/openai_loopback.py``, a loopback OpenAI-compatible test double.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_openai import OpenAIBackend
from oblix_system.connectivity import ConnectivityAgent
from tests.openai_loopback import LoopbackOpenAI


@pytest.fixture
def loopback() -> Iterator[LoopbackOpenAI]:
    with LoopbackOpenAI(answer="from the base URL") as server:
        yield server


@pytest.fixture
def base_url(loopback: LoopbackOpenAI, monkeypatch: pytest.MonkeyPatch) -> str:
    url = loopback.url.replace("127.0.0.1", "user:pa55word@127.0.0.1")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-base-url-test")
    return url


@pytest.mark.anyio
async def test_requests_checks_and_probes_go_to_the_base_url(loopback: LoopbackOpenAI, base_url: str) -> None:
    backend = OpenAIBackend("gpt-4o-mini")
    await backend.start()
    try:
        request = GenerationRequest((ChatMessage("user", "hi"),), max_tokens=8)
        text = "".join([chunk.text async for chunk in backend.stream(request)])
        assert text == "from the base URL" and loopback.chat_requests == 1
        described = backend.describe()["endpoint"]
        assert described.startswith("http://") and f"127.0.0.1:{loopback.port}/v1" in described
        assert "pa55word" not in described and "pa55word" not in backend.where  # credentials redacted
        ok, how = backend.health_check(5.0)
        assert ok and loopback.models_requests >= 1, how
        agent = ConnectivityAgent()
        agent.set_models([backend])
        assert agent.targets() == [("127.0.0.1", loopback.port)]
    finally:
        await backend.aclose()


def test_without_the_variable_it_is_openais_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    backend = OpenAIBackend("gpt-4o-mini", api_key="sk-x")
    assert backend.where == "api.openai.com"
    assert backend.describe()["endpoint"] == "https://api.openai.com/v1"
    agent = ConnectivityAgent()
    agent.set_models([backend])
    assert agent.targets() == [("api.openai.com", 443)]


def test_an_explicit_endpoint_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    backend = OpenAIBackend("m", endpoint="http://127.0.0.1:2/v1")
    assert backend.base_url == "http://127.0.0.1:2/v1"
    assert backend.describe()["endpoint"] == "http://127.0.0.1:2/v1"
