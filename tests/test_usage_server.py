"""Issue 28 through a real ``oblix server``: a client that hangs up before the final chunk still
spends, and an endpoint's hostile token counts are recorded as estimates, never a 500.

The cloud model is the OpenAI backend in the server process, talking to a hostile loopback
endpoint (``tests/hostile_openai.py``, a test double of a provider); the client is the
official ``openai`` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from oblix_core.usage.sqlite import SqliteUsageLedger
from tests.hostile_openai import HostileOpenAI
from tests.server_process import OblixServer, model_toml
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # oblix server processes

KEY = "sk-oblix-usage-7d1e"


@pytest.fixture
def endpoint() -> Iterator[HostileOpenAI]:
    with HostileOpenAI(words=200) as server:
        server.pause = 0.02  # the answer takes seconds: the client can leave in the middle
        yield server


def _serve(home: Path, endpoint: HostileOpenAI, budgets: str = "") -> OblixServer:
    options = {"endpoint": endpoint.url, "api_key": "sk-hostile-endpoint", "context_window": 8192}
    (home / "config.toml").write_text(
        f"[budgets]\n{budgets}\n" + model_toml("openai", "gpt-4o-mini", **options)
    )
    return OblixServer(home, "--store-all", api_key=KEY)


def _records(home: Path) -> list[object]:
    ledgers = list(home.rglob(".usage.sqlite3")) or list(home.rglob("usage.sqlite3"))
    ledger = SqliteUsageLedger(ledgers[0])
    try:
        return list(ledger.recent(10))
    finally:
        ledger.close()


def test_a_client_that_hangs_up_before_the_end_still_spends_the_budget(
    tmp_path: Path, endpoint: HostileOpenAI
) -> None:
    with _serve(tmp_path, endpoint, "daily_usd = 0.0000001") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "a long story"}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # hang up after the first words
        stream.close()
        assert wait_until(lambda: endpoint.hung_up == 1, timeout=30)  # the server stopped the upstream answer
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "again"}]
            )
        assert refused.value.status_code == 503 and "daily budget" in str(refused.value)
    [record] = _records(tmp_path)
    assert record.error.startswith("abandoned") and record.output_tokens > 0  # type: ignore[attr-defined]
    assert endpoint.chat_requests == 1


def test_hostile_counts_through_the_server_are_an_answer_and_an_estimate(
    tmp_path: Path, endpoint: HostileOpenAI
) -> None:
    endpoint.pause, endpoint.words = 0.0, 5
    endpoint.usage = {"prompt_tokens": "100", "completion_tokens": [1]}
    with _serve(tmp_path, endpoint) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "w0 w1 w2 w3 w4 "
        assert answer.usage is not None and answer.usage.prompt_tokens > 0
    [record] = _records(tmp_path)
    assert "not a token count" in record.error and record.tokens_estimated  # type: ignore[attr-defined]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_answer_given_is_in_the_ledger_even_if_the_server_is_killed_at_once(
    tmp_path: Path, endpoint: HostileOpenAI, streamed: bool
) -> None:
    """The ledger writes behind the request path; the server waits for an answer's record
    before the answer's end goes out, so a SIGKILL right after the client has it loses nothing
    (before: the record waited up to 5 ms in the writer's queue, and the kill took it)."""
    import signal

    endpoint.pause = 0.0
    answered = 0
    for _ in range(3):
        server = _serve(tmp_path, endpoint).start()
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
            messages: list[Any] = [{"role": "user", "content": "hi"}]
            if streamed:
                chunks = client.chat.completions.create(
                    model="openai:gpt-4o-mini", messages=messages, stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                answer = client.chat.completions.create(model="openai:gpt-4o-mini", messages=messages)
                assert answer.choices[0].message.content
            answered += 1
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)  # at once: no exit handler runs
            server.process.wait()
        finally:
            server.stop()
        assert len(_records(tmp_path)) == answered
