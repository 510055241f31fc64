"""Issue 28, as a hostile endpoint and a hostile reader would try it: every cloud answer is
counted (whole, interrupted or abandoned), counts from endpoints are checked, the budget gate
cannot be held by a stalled reader, an endless answer stops at its cap, and retries are
counted once.

The endpoints are loopback HTTP servers (test doubles standing in for misbehaving providers:
``tests/hostile_openai.py`` and ``tests/anthropic_double.py``) in front of the real
``openai`` and ``anthropic`` clients.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic.types as wire
import anyio
import pytest

from oblix_anthropic.mapping import EventReader
from oblix_core.client import OblixClient
from oblix_core.errors import StreamInterruptedError
from oblix_core.models.backend import ModelType
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.request.execution import ExecutionSettings
from oblix_core.usage.counts import MAX_TOKEN_COUNT, provider_usage, token_count
from oblix_core.usage.gate import BudgetGate, BudgetGateBusyError
from tests.anthropic_double import AnthropicDouble
from tests.conftest import FAST
from tests.hostile_openai import HostileOpenAI

CLOUD = "openai:gpt-4o-mini"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def endpoint() -> Iterator[HostileOpenAI]:
    with HostileOpenAI() as server:
        yield server


def _config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


async def _client(home: Path, endpoint: HostileOpenAI, execution: ExecutionSettings = FAST) -> OblixClient:
    client = OblixClient(home=home, execution=execution)
    await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", endpoint=endpoint.url, context_window=8192)
    return client


# -- counts from endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [-10_000_000, "100", [1], 1e30, 10**30, 1.5, True, {"n": 1}, MAX_TOKEN_COUNT + 1],
    ids=repr,
)
def test_only_sane_integers_are_token_counts(value: Any) -> None:
    assert token_count(value) is None
    usage, note = provider_usage(value, 7)
    assert usage.input_tokens is None and usage.output_tokens == 7
    assert note is not None and "input_tokens" in note and "not a token count" in note


def test_valid_counts_pass_unchanged() -> None:
    usage, note = provider_usage(0, MAX_TOKEN_COUNT, 0)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, note) == (
        0,
        MAX_TOKEN_COUNT,
        0,
        None,
    )
    assert provider_usage(None, None) == (provider_usage()[0], None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -10_000_000, "completion_tokens": 50},
        {"prompt_tokens": "100", "completion_tokens": 50},
        {"prompt_tokens": 100, "completion_tokens": [1]},
        {"prompt_tokens": 1e30, "completion_tokens": 50},
        {"prompt_tokens": 100, "completion_tokens": 10**30},
        {"prompt_tokens": 100, "completion_tokens": 2.5},
    ],
    ids=["negative", "string", "list", "float-1e30", "int-1e30", "float"],
)
async def test_bad_counts_are_an_estimate_and_an_error_never_a_failure(
    home: Path, endpoint: HostileOpenAI, usage: dict[str, Any]
) -> None:
    endpoint.usage = usage
    async with await _client(home, endpoint) as client:
        result = await client.execute("hi there", stream=False)
        metrics = result["metrics"]
        assert metrics["tokens_estimated"] and "not a token count" in metrics["usage_error"]
        assert 0 < metrics["input_tokens"] < 1000 and 0 < metrics["output_tokens"] < 1000
        assert 0 <= metrics["cost_usd"] < 0.01
        [record] = client.usage_ledger.recent(5)
        assert record.tokens_estimated and "not a token count" in record.error
        assert 0 < record.input_tokens < 1000 and 0 < record.output_tokens < 1000
        assert 0 < record.cost_usd < 0.01
        assert client.usage()["total"]["cost_usd"] == pytest.approx(record.cost_usd)


# -- every answer counted -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_abandoned_stream_is_recorded_and_closes_the_budget(
    home: Path, endpoint: HostileOpenAI
) -> None:
    _config(home, "[budgets]\ndaily_usd = 0.0000001\n")
    async with await _client(home, endpoint) as client:
        stream = client.stream("tell me a long story")
        async with stream:
            async for _ in stream:
                break  # the reader hangs up after the first chunk
        [record] = client.usage_ledger.recent(5)
        assert record.model_id == CLOUD and record.request_id.startswith(f"{stream.request_id}.abandoned-")
        assert record.error.startswith("abandoned") and record.tokens_estimated
        assert record.input_tokens > 0 and record.output_tokens > 0 and record.cost_usd > 0.0000001
        with pytest.raises(BudgetExceededError, match="daily budget"):
            await client.execute("and another", stream=False)
    assert endpoint.chat_requests == 1


@pytest.mark.anyio
async def test_an_abandoned_try_and_the_retry_that_answers_are_both_counted(
    home: Path, endpoint: HostileOpenAI
) -> None:
    async with await _client(home, endpoint) as client:
        stream = client.stream("tell me a long story", idempotency_key="story-1")
        async with stream:
            async for _ in stream:
                break
        result = await client.execute("tell me a long story", stream=False, idempotency_key="story-1")
        assert result["request_id"] == stream.request_id  # the key keeps the request's id
        records = client.usage_ledger.recent(5)
        assert sorted(r.error.split(":")[0] for r in records) == ["", "abandoned"]
        assert client.usage()["total"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in records))
    assert endpoint.chat_requests == 2  # two answers were generated: both are paid for


@pytest.mark.anyio
async def test_a_cancelled_reader_is_recorded(home: Path, endpoint: HostileOpenAI) -> None:
    endpoint.pause = 0.05
    async with await _client(home, endpoint) as client:
        request_ids = []
        with anyio.move_on_after(1):
            stream = client.stream("tell me a long story")
            request_ids.append(stream.request_id)
            async for _ in stream:
                pass
        [record] = client.usage_ledger.recent(5)
        assert record.request_id.startswith(request_ids[0]) and record.error.startswith("abandoned")


@pytest.mark.anyio
async def test_an_endless_answer_stops_at_the_cap_and_is_counted_not_stored_as_complete(
    home: Path, endpoint: HostileOpenAI
) -> None:
    endpoint.mode = "endless"
    capped = ExecutionSettings(
        backoff_initial=0.001,
        backoff_max=0.002,
        first_token_timeout=5,
        total_timeout=30,
        max_answer_chars=50_000,
    )
    async with await _client(home, endpoint, capped) as client:
        sid = await client.create_session("endless")
        with pytest.raises(StreamInterruptedError, match="max_answer_chars=50000") as info:
            await client.execute("go on forever", session_id=sid, stream=False)
        assert 0 < len(info.value.partial) <= 50_000
        messages = client.load_session(sid)["messages"]
        assert messages[-1]["metrics"]["interrupted"] is True
        assert len(messages[-1]["content"]) <= 50_000
        [record] = client.usage_ledger.recent(5)
        assert record.error.startswith("interrupted") and "max_answer_chars" in record.error
        assert record.output_tokens >= 10_000  # estimated from what was streamed (4 characters a token)
        with anyio.fail_after(10):  # the upstream stream was closed, not read without end
            while endpoint.hung_up < 1:
                await anyio.sleep(0.05)


def test_the_answer_cap_is_a_setting_with_a_default() -> None:
    assert ExecutionSettings().max_answer_chars == 1_000_000
    with pytest.raises(ValueError, match="max_answer_chars must be an integer >= 1"):
        ExecutionSettings(max_answer_chars=0)


# -- the budget gate --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stalled_reader_does_not_hold_the_budget_gate(home: Path, endpoint: HostileOpenAI) -> None:
    _config(home, "[budgets]\ndaily_usd = 100\ngate_stall = 0.2\n")
    async with await _client(home, endpoint) as client:
        stalled = client.stream("a long answer, read by nobody")
        async with stalled:
            await stalled.__anext__()  # takes the gate, hands text over, and is never read again
            with anyio.fail_after(60):  # before: waited forever for the gate
                result = await client.execute("meanwhile, another question", stream=False)
            assert result["model_id"] == CLOUD
        assert sorted(r.error.split(":")[0] for r in client.usage_ledger.recent(5)) == ["", "abandoned"]


@pytest.mark.anyio
async def test_a_wait_for_the_budget_gate_is_bounded(home: Path, endpoint: HostileOpenAI) -> None:
    _config(home, "[budgets]\ndaily_usd = 100\ngate_wait = 0.2\n")
    endpoint.pause = 0.1  # a slow model, read attentively: its request holds the gate
    async with await _client(home, endpoint) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(client.execute, "a slow answer", None, None, None, None, False)
        await anyio.sleep(0.5)
        with pytest.raises(BudgetGateBusyError, match=r"Waited 0.2s for the budget gate .* gate_wait"):
            await client.execute("in a hurry", stream=False)
    assert endpoint.chat_requests == 1  # the refused request sent nothing


class _Clock:
    """A test double of ``time.monotonic``: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_goes_to_the_next_request_when_the_holders_reader_stalls() -> None:
    clock, first, second = _Clock(), object(), object()
    gate = BudgetGate("ledger", clock)
    assert gate.try_acquire(first, stall=10)
    clock.now += 3600  # the model is slow, the reader attentive: the holder keeps the gate
    assert not gate.try_acquire(second, stall=10)
    gate.reader(first, True)
    clock.now += 9.9
    assert not gate.try_acquire(second, stall=10)
    clock.now += 0.1  # handed text 10 s ago and not asked for more
    assert gate.try_acquire(second, stall=10) and gate.held_by(second)
    gate.release(first)  # the stalled request ends later: it cannot free the new holder's gate
    assert gate.held_by(second)


def test_a_reader_that_takes_a_chunk_now_and_then_cannot_keep_the_gate() -> None:
    clock, drip, other = _Clock(), object(), object()
    gate = BudgetGate("ledger", clock)
    assert gate.try_acquire(drip, stall=10)
    for _ in range(4):  # 3 s waiting for the reader, then one chunk read: 12 s in all
        gate.reader(drip, True)
        clock.now += 3
        gate.reader(drip, False)
        clock.now += 1
    assert gate.try_acquire(other, stall=10)
    gate.release(other)
    assert not gate.held_by(other) and gate.try_acquire(drip, stall=10)


# -- retries counted once ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_429_with_retry_after_makes_one_plus_max_retries_calls(
    home: Path, endpoint: HostileOpenAI
) -> None:
    endpoint.mode = "429"
    async with await _client(home, endpoint) as client:
        with pytest.raises(Exception, match="429"):
            await client.execute("hi", stream=False)
    assert endpoint.chat_requests == 1 + FAST.max_retries


@pytest.mark.anyio
async def test_claude_429_with_retry_after_makes_one_plus_max_retries_calls(home: Path) -> None:
    with AnthropicDouble() as double:
        double.script = [(429, {"retry-after": "0.05"})] * 20
        async with OblixClient(home=home, execution=FAST) as client:
            await client.hook_model(
                ModelType.CLAUDE, "claude-3-5-sonnet-20241022", endpoint=double.url, api_key="k"
            )
            with pytest.raises(Exception, match="429") as info:
                await client.execute("hi", stream=False)
        assert (
            len(double.bodies) == 1 + FAST.max_retries
        )  # was 9: the SDK's, the backend's and ours multiplied
        assert len(info.value.attempts) == 1 + FAST.max_retries  # type: ignore[attr-defined]


# -- the Claude mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-10_000_000, "100", [1], 1e30], ids=repr)
def test_claude_counts_are_checked_by_the_mapping(bad: Any) -> None:
    # the SDK's own event types, built without validation as its stream builds them
    usage = wire.Usage.model_construct(input_tokens=bad, output_tokens=1)
    message = wire.Message.model_construct(usage=usage)
    reader = EventReader()
    assert reader.read(wire.RawMessageStartEvent.model_construct(type="message_start", message=message)) == []
    delta = wire.MessageDeltaUsage.model_construct(output_tokens=bad)
    stop = {"stop_reason": "end_turn"}
    event = wire.RawMessageDeltaEvent.model_construct(type="message_delta", delta=_Delta(stop), usage=delta)
    reader.read(event)
    [last] = reader.read(wire.RawMessageStopEvent.model_construct(type="message_stop"))
    assert last.usage is not None and last.usage.input_tokens is None and last.usage.output_tokens == 1
    assert last.info is not None and "not a token count" in last.info["usage_error"]


class _Delta:
    """The ``delta`` of a ``message_delta`` event: just its stop reason."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.stop_reason = fields["stop_reason"]


@pytest.mark.anyio
async def test_openai_429_asking_for_a_long_wait_moves_on_at_once(
    home: Path, endpoint: HostileOpenAI
) -> None:
    endpoint.mode, endpoint.retry_after = "429", "600"
    async with await _client(home, endpoint) as client:
        with pytest.raises(Exception, match=r"retry after 600s .*max_retry_wait=20s"):
            await client.execute("hi", stream=False)
    assert endpoint.chat_requests == 1


@pytest.mark.anyio
async def test_openai_honours_a_retry_after_http_date(endpoint: HostileOpenAI) -> None:
    """Retry-After as an HTTP date (RFC 9110 allows both forms) is a wait on OpenAI too, read by
    the one ``retry_after`` both cloud backends use (OpenAI ignored the date form)."""
    from email.utils import formatdate

    from oblix_core.errors import TransientModelError
    from oblix_core.models.backend import ChatMessage, GenerationRequest
    from oblix_openai import OpenAIBackend

    endpoint.mode = "429"
    endpoint.retry_after = formatdate(time.time() + 30, usegmt=True)
    backend = OpenAIBackend("gpt-4o-mini", endpoint=endpoint.url, api_key="sk-hostile", max_retry_wait=60)
    await backend.start()
    try:
        with pytest.raises(TransientModelError) as info:
            async for _ in backend.stream(GenerationRequest((ChatMessage("user", "hi"),))):
                pass
    finally:
        await backend.aclose()
    wait = info.value.retry_after
    assert wait is not None and 25 <= wait <= 31
