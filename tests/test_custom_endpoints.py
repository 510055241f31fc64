"""Self-hosted OpenAI-compatible endpoints that just work: the context window is learned from the
server (``/models``, or the refusal that says it was exceeded), else a conservative default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oblix import ModelType, OblixClient
from oblix_core.errors import ContextWindowExceededError
from oblix_core.models.transport import context_exceeded
from oblix_core.sessions.records import Message
from oblix_llamacpp.packaged import packaged_model_path
from oblix_openai.backend import CUSTOM_ENDPOINT_WINDOW
from tests.openai_loopback import LoopbackOpenAI
from tests.servers import LlamaServer


@pytest.fixture
def loopback() -> Iterator[LoopbackOpenAI]:
    with LoopbackOpenAI(answer="fine") as server:
        yield server


def _url(server: LoopbackOpenAI) -> str:
    return f"http://127.0.0.1:{server.port}/v1"


@pytest.mark.parametrize(
    "entry",
    [{"max_model_len": 3000}, {"context_length": 3000}, {"meta": {"n_ctx_train": 3000}}],
    ids=["vllm", "openrouter", "llama.cpp"],
)
@pytest.mark.anyio
async def test_the_window_is_learned_from_the_models_listing(
    make_client: Any, loopback: LoopbackOpenAI, entry: dict[str, Any]
) -> None:
    loopback.model_entry = entry
    client: OblixClient = make_client()
    await client.hook_model(ModelType.OPENAI, "loopback", endpoint=_url(loopback))
    model = client.find_model("openai:loopback")
    assert model is not None and model.context_window == 3000
    assert model.describe()["context_window_source"] == "reported by the server"


@pytest.mark.anyio
async def test_an_endpoint_that_reports_nothing_gets_a_conservative_window(
    make_client: Any, loopback: LoopbackOpenAI
) -> None:
    client: OblixClient = make_client()
    await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", endpoint=_url(loopback))
    model = client.find_model("openai:gpt-4o-mini")
    assert model is not None and model.context_window == CUSTOM_ENDPOINT_WINDOW  # not gpt-4o-mini's 128k
    assert "set context_window" in model.describe()["context_window_source"]
    await client.hook_model(ModelType.OPENAI, "configured", endpoint=_url(loopback), context_window=9000)
    configured = client.find_model("openai:configured")
    assert configured is not None and configured.context_window == 9000


@pytest.mark.anyio
async def test_a_context_exceeded_refusal_teaches_the_window_and_the_request_is_retried_trimmed(
    make_client: Any, loopback: LoopbackOpenAI
) -> None:
    loopback.context_limit = 400
    client: OblixClient = make_client()
    await client.hook_model(ModelType.OPENAI, "big", endpoint=_url(loopback), context_window=100_000)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 60}
        for i in range(40)
    ]
    result = await client.execute("and now?", history=history, store=False, stream=False)
    assert result["response"] == "fine"
    assert loopback.chat_requests == 2  # refused once, then sent trimmed to the reported window
    sent = [len(body["messages"]) for body in loopback.bodies]
    assert sent[0] == 41 and sent[1] < sent[0]
    model = client.find_model("openai:big")
    assert model is not None and model.context_window == 400
    attempts = result["metrics"]["attempts"]
    assert "400-token context window" in attempts[0]["error"] and attempts[1]["error"] is None


@pytest.mark.parametrize(
    ("detail", "window"),
    [
        ("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens", 8192),
        ("Requested tokens (2062) exceed context window of 2048", 2048),
        ('{"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}}', 4096),
        ("prompt is too long: 208000 tokens > 200000 maximum", 200000),
        ("the input length exceeds the context length", None),
    ],
)
def test_context_exceeded_messages_are_recognised(detail: str, window: int | None) -> None:
    error = context_exceeded("openai:m", "a server", 400, detail)
    assert isinstance(error, ContextWindowExceededError) and error.window == window
    assert "context_window" in str(error) and "larger window" in str(error)


def test_other_refusals_are_not_context_errors() -> None:
    assert context_exceeded("openai:m", "a server", 400, "Invalid value for 'model'") is None
    assert context_exceeded("openai:m", "a server", 500, "maximum context length is 10 tokens") is None


@pytest.mark.llama
@pytest.mark.anyio
async def test_a_real_2048_token_server_named_like_a_cloud_model_answers_a_long_session(
    make_client: Any, tmp_path: Path
) -> None:
    server = LlamaServer(packaged_model_path()).start()
    try:
        client: OblixClient = make_client()
        await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", endpoint=server.url)
        session_id = await client.create_session(title="long")
        filler = [
            {"role": role, "content": f"Note {i}: " + "the quick brown fox jumps over the lazy dog " * 6}
            for i in range(60)
            for role in ("user", "assistant")
        ]
        client.store.append_messages(session_id, [Message(m["role"], m["content"]) for m in filler])
        result = await client.execute(
            "What is the capital of France?", session_id=session_id, max_tokens=16, stream=False
        )
        assert result["response"].strip()
        assert result["metrics"]["finish_reason"] in ("stop", "length")
        assert 1 < result["metrics"]["history_messages_sent"] < len(filler)
    finally:
        server.kill()
