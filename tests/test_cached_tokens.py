"""Cached prompt tokens, as the providers report them, reach the result's metrics
(``cached_input_tokens``), the usage ledger and ``oblix usage``.

OpenAI: the real ``openai`` client against :mod:`tests.openai_loopback`, which sends
``usage.prompt_tokens_details.cached_tokens`` on request. Anthropic: the real
``anthropic`` client against :mod:`tests.anthropic_double`, which simulates the prompt
cache and reports ``cache_read_input_tokens``."""

from __future__ import annotations

from pathlib import Path

import pytest

from oblix import ModelType, OblixClient
from oblix_core.cli.tables import usage_line
from tests.anthropic_double import AnthropicDouble
from tests.conftest import FAST
from tests.openai_loopback import LoopbackOpenAI

SECRET = "sk-ant-oblix-test-SECRET-4242"


@pytest.mark.anyio
async def test_openai_cached_tokens_reach_the_metrics_and_the_ledger(home: Path) -> None:
    with LoopbackOpenAI() as server:
        server.report_usage = True
        server.cached_tokens = 16
        async with OblixClient(home=home, execution=FAST) as client:
            await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", endpoint=server.url)
            cached = await client.execute("x" * 200, stream=False)
            server.cached_tokens = None  # a usage event without prompt_tokens_details
            plain = await client.execute("y" * 200, stream=False)
            report = client.usage(by="model")
            recorded = {r.request_id: r.cached_tokens for r in client.usage_ledger.recent(10)}
    assert server.bodies[0]["stream_options"] == {"include_usage": True}
    assert cached["metrics"]["tokens_estimated"] is False
    assert cached["metrics"]["input_tokens"] == 50  # the usage event's, not an estimate
    assert cached["metrics"]["cached_input_tokens"] == 16
    assert plain["metrics"]["cached_input_tokens"] is None
    assert recorded == {cached["request_id"]: 16, plain["request_id"]: 0}
    assert report["total"]["cached_tokens"] == 16
    assert [row["cached_tokens"] for row in report["rows"]] == [16]
    assert usage_line(cached["metrics"]).startswith(
        "Token usage: 50 input, 3 output, 16 read from the prompt cache;"
    )


@pytest.mark.anyio
async def test_anthropic_cache_reads_reach_the_metrics_and_the_ledger(home: Path) -> None:
    with AnthropicDouble(api_key=SECRET, min_cache_tokens=50) as double:
        async with OblixClient(home=home, execution=FAST) as client:
            sonnet = "claude-3-5-sonnet-20241022"
            await client.hook_model(ModelType.CLAUDE, sonnet, endpoint=double.url, api_key=SECRET)
            sid = await client.create_session(initial_context={"manual": "x" * 400})
            first = await client.execute("Tell me about the manual.", session_id=sid, stream=False)
            second = await client.execute("And the next chapter?", session_id=sid, stream=False)
            recorded = {r.request_id: r.cached_tokens for r in client.usage_ledger.recent(10)}
            report = client.usage()
    assert first["metrics"]["cached_input_tokens"] == 0  # written to the cache, not read from it
    read = second["metrics"]["cache_read_input_tokens"]
    assert read > 0 and second["metrics"]["cached_input_tokens"] == read
    assert second["metrics"]["input_tokens"] > read  # the whole prompt, cached part included
    assert recorded == {first["request_id"]: 0, second["request_id"]: read}
    assert report["total"]["cached_tokens"] == read
