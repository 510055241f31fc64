"""Ledger writes are all-or-nothing, and a damaged ledger says which file and what to do (issue 28).

SQLite on a real file; Redis on a real ``redis-server`` (its Lua script refuses a bad record
before its first write, so a corrected retry counts); ``oblix usage --repair`` and ``--since``
through the real command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from click.testing import CliRunner

from oblix_core.cli.main import build_cli
from oblix_core.errors import OblixError
from oblix_core.usage.ledger import LedgerDamagedError, UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_redis.ledger import RedisUsageLedger
from oblix_s3.store import S3SessionStore
from tests import redis_servers, s3_server
from tests.redis_servers import RedisServer, unique_prefix

redis_server = redis_servers.redis_server
s3_bucket = s3_server.s3_bucket  # a fresh bucket on moto's S3 server


def _record(request_id: str, **changes: Any) -> UsageRecord:
    base = UsageRecord(
        request_id, "openai:gpt-4o-mini", False, 100, 20, 0.25, timestamp="2026-01-02T03:04:05Z"
    )
    return attrs.evolve(base, **changes)


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[SqliteUsageLedger]:
    ledger = SqliteUsageLedger(tmp_path / "usage.sqlite3")
    yield ledger
    ledger.close()


def test_a_sqlite_batch_with_a_bad_record_writes_none_of_it(sqlite_ledger: SqliteUsageLedger) -> None:
    with pytest.raises(OverflowError):
        sqlite_ledger.record_many([_record("good"), _record("bad", input_tokens=10**30)])
    assert sqlite_ledger.recent() == [] and sqlite_ledger.spent() == 0
    sqlite_ledger.record_many([_record("good")])
    assert [r.request_id for r in sqlite_ledger.recent()] == ["good"]


def test_the_error_column_is_kept_and_added_to_an_older_ledger(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    columns = (
        "request_id TEXT PRIMARY KEY, ts TEXT, day TEXT, session_id TEXT, model_id TEXT, local INTEGER, "
        "input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, latency_ms REAL, cost_usd REAL, "
        "rule TEXT, reason TEXT, tokens_estimated INTEGER"
    )
    db.execute(f"CREATE TABLE usage ({columns})")  # as Oblix wrote it before the error column
    db.commit()
    db.close()
    ledger = SqliteUsageLedger(path)
    try:
        ledger.record(_record("r1", error="abandoned: the reader stopped"))
        assert ledger.recent()[0].error == "abandoned: the reader stopped"
    finally:
        ledger.close()


def test_a_damaged_sqlite_ledger_names_its_file_and_repair_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    path.write_bytes(b"this is no database at all " * 400)
    ledger = SqliteUsageLedger(path)
    try:
        with pytest.raises(LedgerDamagedError, match=rf"{path} is damaged .*oblix usage --repair"):
            ledger.spent()
        report = ledger.repair()
        [aside] = tmp_path.glob("usage.sqlite3.damaged-*")
        assert str(aside) in report and "0 record(s)" in report
        assert aside.read_bytes().startswith(b"this is no database")
        ledger.record(_record("after"))
        assert ledger.spent() == pytest.approx(0.25)
    finally:
        ledger.close()


def test_repair_keeps_every_record_it_can_read(sqlite_ledger: SqliteUsageLedger) -> None:
    sqlite_ledger.record_many([_record(f"r{i}", error="x" if i else "") for i in range(3)])
    assert "3 record(s)" in sqlite_ledger.repair()
    assert sorted(r.request_id for r in sqlite_ledger.recent()) == ["r0", "r1", "r2"]
    assert sqlite_ledger.spent() == pytest.approx(0.75)


def test_oblix_usage_repair_and_a_clear_error_before_it(home: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["usage"]).exit_code == 0  # creates the file store's ledger
    [path] = home.rglob(".usage.sqlite3")
    for extra in home.rglob(".usage.sqlite3-*"):
        extra.unlink()
    path.write_bytes(b"garbage " * 1000)
    broken = runner.invoke(build_cli(), ["usage"])
    assert broken.exit_code == 1 and str(path) in broken.output and "oblix usage --repair" in broken.output
    assert "unexpected" not in broken.output
    repaired = runner.invoke(build_cli(), ["usage", "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "Moved the damaged usage ledger" in repaired.output
    assert runner.invoke(build_cli(), ["usage", "--json"]).exit_code == 0


@pytest.mark.parametrize("since", ["99999999d", "99999999999999999999w", "0d", "-3d", "3y", "2025-13-01"])
def test_oblix_usage_since_out_of_range_is_a_clear_error(home: Path, since: str) -> None:
    result = CliRunner().invoke(build_cli(), ["usage", "--since", since])
    assert result.exit_code != 0 and "--since" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, OverflowError)


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_ledger(redis_server: RedisServer) -> Iterator[tuple[RedisUsageLedger, redis.Redis]]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield RedisUsageLedger(client, unique_prefix()), client
    client.close()


@pytest.mark.parametrize(
    "bad", [{"input_tokens": 10**30}, {"output_tokens": -5}, {"cost_usd": 1e300}], ids=repr
)
def test_a_refused_redis_record_leaves_nothing_and_a_retry_counts(
    redis_ledger: tuple[RedisUsageLedger, redis.Redis], bad: dict[str, Any]
) -> None:
    ledger, client = redis_ledger
    with pytest.raises(redis.ResponseError, match="usage record: bad"):
        ledger.record(_record("req-1", **bad))
    assert ledger.totals(date(2026, 1, 1))[0].requests == 0
    assert not client.exists(f"{ledger.base}id:req-1")
    assert client.xlen(f"{ledger.base}log") == 0
    ledger.record(_record("req-1"))  # the corrected retry is counted, once
    ledger.record(_record("req-1"))
    total = ledger.totals(date(2026, 1, 1))[0]
    assert (total.requests, total.input_tokens, total.output_tokens) == (1, 100, 20)
    assert ledger.spent(date(2026, 1, 1)) == pytest.approx(0.25)


def test_a_redis_key_of_the_wrong_type_refuses_the_record_whole(
    redis_ledger: tuple[RedisUsageLedger, redis.Redis],
) -> None:
    ledger, client = redis_ledger
    client.set(f"{ledger.base}log", "not a stream")
    with pytest.raises(redis.ResponseError, match="holds a string, not a stream"):
        ledger.record(_record("req-2"))
    assert ledger.totals(date(2026, 1, 1))[0].requests == 0
    assert not client.exists(f"{ledger.base}id:req-2")


# -- S3 (moto's S3 server) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": -10_000_000},
        {"output_tokens": 10**30},
        {"cost_usd": float("nan")},
        {"latency_ms": -1.0},
    ],
    ids=repr,
)
def test_a_bad_s3_record_is_refused_before_anything_is_written(
    s3_bucket: dict[str, str], bad: dict[str, Any]
) -> None:
    store = S3SessionStore(bucket=s3_bucket["bucket"], endpoint_url=s3_bucket["endpoint_url"], prefix="p/")
    try:
        ledger = store.usage_ledger()
        assert ledger is not None
        ledger.record(_record("good"))
        with pytest.raises(OblixError, match=r"Usage record bad: .* nothing was written"):
            ledger.record(_record("bad", **bad))
        (total,) = ledger.totals(date(2026, 1, 1))
        assert (total.requests, total.input_tokens, total.cost_usd) == (1, 100, pytest.approx(0.25))
        ledger.record(_record("bad"))  # the corrected record counts
        assert ledger.totals(date(2026, 1, 1))[0].requests == 2
    finally:
        store.close()


def test_a_redis_counter_overwritten_with_text_refuses_the_record_whole(
    redis_ledger: tuple[RedisUsageLedger, redis.Redis],
) -> None:
    ledger, client = redis_ledger
    ledger.record(_record("req-3"))
    client.hset(f"{ledger.base}d:2026-01-02", "t|out", "twenty")  # someone else's write
    with pytest.raises(redis.ResponseError, match=r"t\|out holds twenty"):
        ledger.record(_record("req-4"))
    assert client.hget(f"{ledger.base}d:2026-01-02", "t|r") == "1"  # req-4 counted nowhere
    assert not client.exists(f"{ledger.base}id:req-4") and client.xlen(f"{ledger.base}log") == 1


def test_oblix_usage_repair_moves_a_damaged_s3_day_object_aside(s3_bucket: dict[str, str]) -> None:
    store = S3SessionStore(bucket=s3_bucket["bucket"], endpoint_url=s3_bucket["endpoint_url"], prefix="r/")
    try:
        ledger = store.usage_ledger()
        assert ledger is not None
        ledger.record(_record("kept", timestamp="2026-01-01T00:00:00Z"))
        ledger.record(_record("lost", timestamp="2026-01-02T00:00:00Z"))
        store.objects.put("r/usage/2026-01-02.json", b"{not json")  # damaged by someone else
        fresh = store.usage_ledger()  # another host: nothing cached
        assert fresh is not None
        damaged = r"r/usage/2026-01-02.json at .* is damaged .*oblix usage --repair"
        with pytest.raises(OblixError, match=damaged):
            fresh.spent()
        report = fresh.repair()
        assert "2026-01-02.json" in report and "usage-damaged/2026-01-02.json." in report
        assert fresh.spent() == pytest.approx(0.25)  # the sound day counts again
        assert any(k.startswith("r/usage-damaged/") for k in store.objects.list_keys("r/"))
        assert "No damaged day object" in fresh.repair()
    finally:
        store.close()
