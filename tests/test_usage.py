"""The usage ledger (SQLite for the file store, Redis, S3), prices, `oblix usage` and the
result's cost: a scripted mixed workload, compared with the requests actually made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import attrs
import pytest

from oblix_core.client import OblixClient
from oblix_core.errors import ConfigError, OblixError
from oblix_core.testing import ScriptedPlugin
from oblix_core.usage.ledger import (
    PRICES,
    Pricing,
    UsageLedger,
    UsageRecord,
    parse_since,
    table_price,
    total_by,
)
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger
from oblix_file.ledger import LEDGER
from oblix_redis.store import RedisSessionStore
from tests import redis_servers, s3_server
from tests.conftest import FAST
from tests.redis_servers import RedisServer, unique_prefix

redis_server = redis_servers.redis_server
s3_bucket = s3_server.s3_bucket  # a fresh bucket on moto's S3 server

LOCAL, CLOUD = "scripted:tiny", "scripted:gpt-4o-mini"


def _record(n: int, **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": f"req_{n}",
        "model_id": CLOUD if n % 2 else LOCAL,
        "local": not n % 2,
        "input_tokens": 100 + n,
        "output_tokens": 10 + n,
        "cost_usd": 0.001 * n if n % 2 else 0.0,
        "session_id": f"s{n % 3}",
        "latency_ms": 5.0,
        "rule": "preference",
    }
    return UsageRecord(**(fields | changes))


@pytest.fixture(params=["sqlite", "sqlite-write-behind", "redis", "s3"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageLedger]:
    if request.param.startswith("sqlite"):
        made: UsageLedger = SqliteUsageLedger(tmp_path / "usage.sqlite3")
        if request.param == "sqlite-write-behind":  # what clients use: the same answers
            made = WriteBehindLedger(made)
        yield made
        made.close()
        return
    if request.param == "s3":
        s3 = s3_server.s3_store(request.getfixturevalue("s3_bucket"))
        made = s3.usage_ledger()
        yield made
        made.close()
        s3.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisSessionStore(url=server.url, prefix=unique_prefix())
    yield store.usage_ledger()
    store.close()


class TestLedger:
    """What every ledger does (the SQLite one of the file store, the Redis one, the S3 one)."""

    def test_totals_by_group_match_the_records(self, ledger: UsageLedger) -> None:
        records = [_record(n) for n in range(1, 8)] + [_record(8, session_id=None)]  # "(no session)"
        for record in records:
            ledger.record(record)
        today = date.fromisoformat(records[0].day)
        for by in ("model", "session", "day", None):
            got = [attrs.asdict(t) for t in ledger.totals(today, by)]
            want = [attrs.asdict(t) for t in total_by(records, by)]
            assert len(got) == len(want) and len(got) > (by == "model")
            for row, expected in zip(got, want, strict=True):
                floats = {k: pytest.approx(expected[k]) for k in ("cost_usd", "latency_ms")}
                assert row == expected | floats

    def test_a_repeated_record_counts_once(self, ledger: UsageLedger) -> None:
        ledger.record(_record(1))
        ledger.record(_record(1))
        (total,) = ledger.totals(date.fromisoformat(_record(1).day))
        assert total.requests == 1
        assert ledger.spent() == pytest.approx(0.001)

    def test_since_leaves_out_older_days(self, ledger: UsageLedger) -> None:
        ledger.record(_record(1, timestamp="2020-01-01T10:00:00.000Z"))
        ledger.record(_record(3))
        today = date.fromisoformat(_record(3).day)
        (total,) = ledger.totals(today)
        assert (total.requests, total.cost_usd) == (1, pytest.approx(0.003))
        assert ledger.spent(since=today) == pytest.approx(0.003)
        assert ledger.spent(since=date(2020, 1, 1)) == pytest.approx(0.004)
        days = [t.key for t in ledger.totals(date(2019, 12, 1), "day")]
        assert days == ["2020-01-01", _record(3).day]

    def test_spent_by_one_session(self, ledger: UsageLedger) -> None:
        for n in (1, 3, 4, 5):  # sessions s1, s0, s1, s2
            ledger.record(_record(n))
        assert ledger.spent(session_id="s1") == pytest.approx(0.001)
        assert ledger.spent(session_id="s0") == pytest.approx(0.003)
        assert ledger.spent(session_id="nobody") == 0

    def test_recent_is_newest_first(self, ledger: UsageLedger) -> None:
        for n in range(1, 5):
            ledger.record(_record(n, timestamp=f"2030-01-01T00:00:0{n}.000Z"))
        recent = ledger.recent(3)
        assert [r.request_id for r in recent] == ["req_4", "req_3", "req_2"]
        assert recent[0] == _record(4, timestamp="2030-01-01T00:00:04.000Z")

    def test_an_empty_ledger_has_a_zero_total(self, ledger: UsageLedger) -> None:
        (total,) = ledger.totals(date(2000, 1, 1))
        assert (total.key, total.requests, total.cost_usd) == ("total", 0, 0)
        assert ledger.totals(date(2000, 1, 1), "model") == []


# -- prices ----------------------------------------------------------------------------------


def test_prices_come_from_the_table_with_dated_names() -> None:
    assert table_price("gpt-4o-mini") == PRICES["gpt-4o-mini"]
    assert table_price("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]
    assert table_price("gpt-4o-2024-08-06") == PRICES["gpt-4o"]
    assert table_price("claude-3-5-haiku-20241022") == PRICES["claude-3-5-haiku"]
    assert table_price("my-own-model") is None


def test_overrides_local_models_and_unknown_cloud_models(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="oblix_core.usage.ledger")  # the notice itself: test_notices.py
    pricing = Pricing.from_entries(
        [{"type": "openai", "name": "mine", "price_in": 1.0, "price_out": 2.0}, {"type": "x", "name": "y"}]
    )
    assert pricing.cost("openai:mine", False, 1_000_000, 500_000) == pytest.approx(2.0)
    assert pricing.cost("llama_cpp:gemma", True, 10**6, 10**6) == 0
    assert pricing.cost("openai:gpt-4o", False, 10**6, 10**6) == pytest.approx(12.5)
    assert pricing.cost("openai:unknown-model", False, 10**6, 10**6) == 0
    assert "no price for cloud model openai:unknown-model" in caplog.text


def test_config_prices_are_checked_and_not_passed_to_the_backend(home: Path) -> None:
    (home / "config.toml").write_text(
        '[[models]]\ntype = "scripted"\nname = "gpt-4o-mini"\nlocal = false\nprice_in = 1.5\n'
        "[budgets]\ndaily_usd = 2\n"
    )
    client = OblixClient(home=home, plugins=[ScriptedPlugin()])
    assert client.engine.pricing.price(CLOUD, False) == (1.5, PRICES["gpt-4o-mini"][1])
    assert client.engine.budgets.daily_usd == 2
    (home / "config.toml").write_text('[[models]]\ntype = "scripted"\nname = "x"\nprice_out = -1\n')
    with pytest.raises(ConfigError, match="price_out must be a finite number of USD >= 0"):
        OblixClient(home=home)


def test_since_forms() -> None:
    today = date(2025, 3, 10)
    assert parse_since("1d", today) == today
    assert parse_since("7d", today) == date(2025, 3, 4)
    assert parse_since("2w", today) == date(2025, 2, 25)
    assert parse_since("2025-01-31", today) == date(2025, 1, 31)
    with pytest.raises(OblixError, match="--since takes"):
        parse_since("yesterday", today)


# -- a scripted mixed workload, end to end ---------------------------------------------------


async def _workload(client: OblixClient) -> list[dict[str, Any]]:
    """Local-first answers, forced cloud answers, a stored session and stateless requests."""
    await client.hook_model("scripted", "tiny", local=True)
    await client.hook_model("scripted", "gpt-4o-mini", local=False)
    sid = await client.create_session(title="mixed")
    results = []
    for i in range(3):
        results.append(await client.execute(f"local question {i}", session_id=sid, stream=False))
    for i in range(4):
        results.append(await client.execute(f"cloud question number {i}", model=CLOUD, stream=False))
    results.append(await client.execute("stateless", model=CLOUD, store=False, stream=False))
    return results


def _expected(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for result in results:
        row = groups.setdefault(key(result), {"requests": 0, "in": 0, "out": 0, "cost": 0.0})
        row["requests"] += 1
        row["in"] += result["metrics"]["input_tokens"]
        row["out"] += result["metrics"]["output_tokens"]
        row["cost"] += result["metrics"]["cost_usd"]
    return groups


def _check(report: dict[str, Any], results: list[dict[str, Any]]) -> None:
    expected = _expected(results, lambda r: r["model_id"])
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == set(expected)
    for model_id, want in expected.items():
        row = rows[model_id]
        got = {"requests": row["requests"], "in": row["input_tokens"], "out": row["output_tokens"]}
        assert got | {"cost": row["cost_usd"]} == want | {"cost": pytest.approx(want["cost"], abs=1e-9)}
    total = report["total"]
    assert total["requests"] == len(results) == 8
    assert total["local_requests"] == 3 and total["local_share"] == pytest.approx(3 / 8, abs=1e-4)
    price_in, price_out = PRICES["gpt-4o-mini"]
    tokens_in = sum(r["metrics"]["input_tokens"] for r in results)
    tokens_out = sum(r["metrics"]["output_tokens"] for r in results)
    versus = (tokens_in * price_in + tokens_out * price_out) / 1e6
    assert total["versus_cost_usd"] == pytest.approx(versus, abs=1e-9)
    assert total["saved_usd"] == pytest.approx(
        versus - sum(r["metrics"]["cost_usd"] for r in results), abs=1e-9
    )


@pytest.mark.anyio
async def test_the_file_store_ledger_tells_the_truth_of_a_mixed_workload(home: Path) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST) as client:
        results = await _workload(client)
        cloud = [r for r in results if r["model_id"] == CLOUD]
        assert all(r["metrics"]["cost_usd"] > 0 for r in cloud)
        assert all(r["metrics"]["cost_usd"] == 0 for r in results if r["model_id"] == LOCAL)
        _check(client.usage(by="model"), results)
        sessions = {r["key"]: r["requests"] for r in client.usage(by="session")["rows"]}
        assert sessions[results[0]["session_id"]] == 3 and sessions["(no session)"] == 1
        stored = client.load_session(results[0]["session_id"])
        assert stored["messages"][-1]["metrics"]["cost_usd"] == results[2]["metrics"]["cost_usd"]
    assert (home / "sessions" / LEDGER).exists()
    env = os.environ | {"OBLIX_HOME": str(home)}
    for args in (["--by", "model"], ["--by", "model", "--since", date.today().isoformat()]):
        done = subprocess.run(
            [sys.executable, "-m", "oblix_core", "usage", "--json", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        _check(json.loads(done.stdout), results)
    table = subprocess.run(
        [sys.executable, "-m", "oblix_core", "usage"],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0 and "38%" in table.stdout and "total" in table.stdout


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["redis", "s3"])
async def test_hosts_on_one_store_share_the_ledger(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    options: dict[str, Any]
    if kind == "redis":
        options = {"url": request.getfixturevalue("redis_server").url, "prefix": unique_prefix()}
    else:
        options = request.getfixturevalue("s3_bucket") | {"prefix": unique_prefix()}
    results = []
    for host in ("host-a", "host-b"):  # two clients, two homes: only the store is shared
        async with OblixClient(
            home=tmp_path / host,
            session_store=kind,
            store_options=options,
            plugins=[ScriptedPlugin()],
            execution=FAST,
        ) as client:
            results += await _workload(client)
    async with OblixClient(home=tmp_path / "c", session_store=kind, store_options=options) as reader:
        report = reader.usage(by="model", versus="gpt-4o-mini")
        assert report["total"]["requests"] == 16
        assert report["total"]["cost_usd"] == pytest.approx(sum(r["metrics"]["cost_usd"] for r in results))
        recent = reader.usage_ledger.recent(100)
        assert {r.request_id for r in recent} == {r["request_id"] for r in results}


def test_an_unpriced_configured_cloud_model_does_not_break_the_report(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[[models]]\ntype = "openai"\nname = "self-hosted"\nendpoint = "http://127.0.0.1:9/v1"\n'
        '[[models]]\ntype = "no-such-backend"\nname = "x"\n'
    )
    client = OblixClient(home=home)
    try:
        report = client.usage()  # the reference falls back to a priced model
        assert report["versus"] == "openai:gpt-4o-mini" and report["total"]["requests"] == 0
        with pytest.raises(OblixError, match="No price is known"):
            client.usage(versus="openai:self-hosted")  # asked for by name: say so
    finally:
        client.usage_ledger.close()
        client.store.close()
