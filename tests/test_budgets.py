"""Budgets steer routing: a spent budget makes cloud models unavailable, names itself in the
routing decision, fails cloud-only requests clearly, and holds under concurrent requests, in
one process and across processes sharing a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix_core.client import OblixClient
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.testing import ScriptedPlugin
from tests import redis_servers
from tests.conftest import FAST
from tests.redis_servers import RedisServer, unique_prefix

redis_server = redis_servers.redis_server

LOCAL, CLOUD = "scripted:tiny", "scripted:gpt-4o-mini"
PROMPT = "the same question every time"


def _config(home: Path, budgets: str, store: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[budgets]\n{budgets}\n{store}")


async def _client(home: Path, local: bool = True, **kwargs: Any) -> OblixClient:
    client = OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST, **kwargs)
    if local:
        await client.hook_model("scripted", "tiny", local=True)
    await client.hook_model("scripted", "gpt-4o-mini", local=False)
    return client


async def _one_cloud_cost(tmp_path: Path) -> float:
    async with await _client(tmp_path / "probe", local=False) as probe:
        result = await probe.execute(PROMPT, stream=False, store=False)
    return float(result["metrics"]["cost_usd"])


@pytest.mark.anyio
async def test_a_spent_daily_budget_routes_to_local_models_and_says_so(home: Path) -> None:
    _config(home, "daily_usd = 0.0000001")
    async with await _client(home, preference="cloud-first") as client:
        first = await client.execute("hello", stream=False)
        assert first["model_id"] == CLOUD and first["metrics"]["cost_usd"] > 0.0000001
        second = await client.execute("hello again", stream=False)
        assert second["model_id"] == LOCAL
        decision = second["routing_decision"]
        assert decision["candidates"] == [LOCAL]
        assert "daily budget of $1e-07 is spent" in decision["reason"]
        assert any("daily budget" in note for note in decision["notes"])
        (cloud,) = [m for m in decision["models"] if m["model_id"] == CLOUD]
        assert cloud["status"] == "skipped" and cloud["why"].startswith("budget: the daily budget")
        with pytest.raises(
            BudgetExceededError, match=r"daily budget .* resets at \d{4}-\d\d-\d\dT00:00:00Z"
        ) as info:
            await client.execute("cloud please", model=CLOUD, stream=False)
        assert info.value.budget.name == "daily" and info.value.budget.spent == pytest.approx(
            first["metrics"]["cost_usd"]
        )


@pytest.mark.anyio
async def test_a_monthly_budget_and_a_cloud_only_client(home: Path) -> None:
    _config(home, "monthly_usd = 0")
    async with await _client(home, local=False) as client:
        with pytest.raises(
            BudgetExceededError, match=r"monthly budget of \$0 is spent.*resets at \d{4}-\d\d-01T"
        ):
            await client.execute("hello", stream=False)
        assert client.usage()["total"]["requests"] == 0  # nothing was sent


@pytest.mark.anyio
async def test_a_session_budget_covers_only_its_session(home: Path) -> None:
    async with await _client(home, preference="cloud-first") as client:
        capped = await client.create_session(title="capped", metadata={"budget_usd": 0})
        free = await client.create_session(title="free")
        assert (await client.execute("hi", session_id=capped, stream=False))["model_id"] == LOCAL
        assert (await client.execute("hi", session_id=free, stream=False))["model_id"] == CLOUD
        with pytest.raises(BudgetExceededError, match=f"session {capped} budget.*never resets"):
            await client.execute("hi", session_id=capped, model=CLOUD, stream=False)
        client.update_session_metadata(capped, {"budget_usd": 1})
        assert (await client.execute("hi", session_id=capped, stream=False))["model_id"] == CLOUD


@pytest.mark.anyio
async def test_concurrent_requests_overspend_by_at_most_one(home: Path, tmp_path: Path) -> None:
    cost = await _one_cloud_cost(tmp_path)
    _config(home, f"daily_usd = {cost * 5.5!r}")
    outcomes: list[str] = []
    async with await _client(home, local=False) as client:

        async def ask() -> None:
            try:
                result = await client.execute(PROMPT, stream=False, store=False)
                outcomes.append(result["model_id"])
            except BudgetExceededError:
                outcomes.append("refused")

        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(ask)
        # one process: budget-covered cloud requests run one at a time, each after reading
        # what the previous ones spent; the sixth is the one that crosses the budget
        assert outcomes.count(CLOUD) == 6 and outcomes.count("refused") == 14
        assert client.usage()["total"]["cost_usd"] == pytest.approx(6 * cost)


_HOST = textwrap.dedent(
    """
    import json, sys, anyio
    from oblix_core.request.budgets import BudgetExceededError
    from oblix_core.client import OblixClient
    from oblix_core.testing import ScriptedPlugin

    async def main():
        async with OblixClient(home=sys.argv[1], plugins=[ScriptedPlugin()]) as client:
            await client.hook_model("scripted", "gpt-4o-mini", local=False)
            outcomes = []
            async def ask():
                try:
                    await client.execute(sys.argv[2], stream=False, store=False)
                    outcomes.append("answered")
                except BudgetExceededError:
                    outcomes.append("refused")
            async with anyio.create_task_group() as tasks:
                for _ in range(15):
                    tasks.start_soon(ask)
            print(json.dumps(outcomes))

    anyio.run(main)
    """
)


def test_hosts_sharing_redis_share_the_budget(redis_server: RedisServer, tmp_path: Path) -> None:
    cost = anyio.run(_one_cloud_cost, tmp_path)
    options = f'{{url = "{redis_server.url}", prefix = "{unique_prefix()}"}}'
    store = f'[sessions]\nstore = "redis"\noptions = {options}\n'
    hosts = []
    for name in ("host-a", "host-b", "host-c"):  # separate processes and homes; only Redis is shared
        _config(tmp_path / name, f"daily_usd = {cost * 7.5!r}", store)
        hosts.append(
            subprocess.Popen(
                [sys.executable, "-c", _HOST, str(tmp_path / name), PROMPT], stdout=subprocess.PIPE, text=True
            )
        )
    outcomes = [json.loads(host.communicate(timeout=120)[0]) for host in hosts]
    answered = sum(o.count("answered") for o in outcomes)
    # 8 answers cross the budget; each other process may have had one request in flight
    assert 8 <= answered <= 8 + 2
    assert sum(o.count("refused") for o in outcomes) == 45 - answered

    async def spent() -> float:
        _config(tmp_path / "reader", "", store)
        async with OblixClient(home=tmp_path / "reader") as reader:
            return float(reader.usage()["total"]["cost_usd"])

    assert anyio.run(spent) == pytest.approx(answered * cost)
