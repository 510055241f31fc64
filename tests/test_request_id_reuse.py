"""A request id the caller gives (``execute(request_id=...)``) may repeat: it labels the
answer, it is no key of anything stored. Before, every answer after the first under one id
was dropped as a repeat — by the usage ledger (so a budget never closed: spending for free)
and by a store that applies a write key once (Redis: the exchange answered, not stored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.testing import ScriptedPlugin
from tests import redis_servers
from tests.redis_servers import RedisServer, unique_prefix

redis_server = redis_servers.redis_server


@pytest.mark.anyio
async def test_every_answer_under_one_request_id_counts_against_the_budget(home: Path) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as probe:
        await probe.hook_model("scripted", "gpt-4o-mini", local=False)
        cost = (await probe.execute("hello", stream=False, store=False))["metrics"]["cost_usd"]
    (home / "config.toml").write_text(f"[budgets]\ndaily_usd = {3.5 * cost!r}\n")
    async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:
        await client.hook_model("scripted", "gpt-4o-mini", local=False)
        before = client.usage()["total"]["requests"]
        answered = 0
        with pytest.raises(BudgetExceededError, match="daily budget"):
            for _ in range(10):
                result = await client.execute("hello", stream=False, request_id="my-trace-1")
                assert result["request_id"] == "my-trace-1"  # the caller's id, as given
                answered += 1
        assert answered == 3  # the 4th would pass the budget; the ledger saw every answer
        assert client.usage()["total"]["requests"] - before == 3


@pytest.mark.anyio
async def test_every_exchange_under_one_request_id_is_stored_in_redis(
    redis_server: RedisServer, home: Path
) -> None:
    options = {"url": redis_server.url, "prefix": unique_prefix()}
    async with OblixClient(
        home=home, plugins=[ScriptedPlugin()], session_store="redis", store_options=options
    ) as client:
        await client.hook_model("scripted", "local")
        session_id = await client.create_session(title="t")
        for turn in range(3):
            await client.execute(f"q{turn}", stream=False, request_id="same", session_id=session_id)
        stored = [m["content"] for m in client.load_session(session_id)["messages"]]
    assert stored == ["q0", "echo: q0", "q1", "echo: q1", "q2", "echo: q2"]
