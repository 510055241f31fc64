"""The S3 store's usage ledger on moto's S3 server: per-day objects shared by several
"hosts" (store instances), concurrent writers, what a query costs, damaged objects.

The shared ledger behaviour (totals, repeated ids, since, spent, recent) is tested for
every ledger, this one included, in tests/test_usage.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import boto3
import pytest

from oblix_core.errors import OblixError
from oblix_core.usage.ledger import UsageRecord
from oblix_s3.ledger import S3UsageLedger
from oblix_s3.store import S3SessionStore
from tests import s3_server

s3_bucket = s3_server.s3_bucket  # a fresh bucket on moto's S3 server


@pytest.fixture
def hosts(s3_bucket: dict[str, str]) -> Iterator[list[S3SessionStore]]:
    """Three store instances on one bucket and prefix: three hosts sharing a store."""
    bucket, url = s3_bucket["bucket"], s3_bucket["endpoint_url"]
    stores = [S3SessionStore(bucket=bucket, endpoint_url=url, prefix="shared/") for _ in range(3)]
    yield stores
    for store in stores:
        store.close()


def _record(name: str, day: str = "2025-06-01", **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": name,
        "model_id": "openai:gpt-4o-mini",
        "local": False,
        "input_tokens": 10,
        "output_tokens": 2,
        "cost_usd": 0.001,
        "timestamp": f"{day}T12:00:00.000Z",
        "session_id": "s1",
        "cached_tokens": 4,
    }
    return UsageRecord(**(fields | changes))


def test_hosts_share_the_ledger_and_count_a_repeated_request_once(hosts: list[S3SessionStore]) -> None:
    a, b, _ = (store.usage_ledger() for store in hosts)
    a.record(_record("r1"))
    b.record(_record("r2", model_id="llama_cpp:gemma", local=True, cost_usd=0.0, session_id=None))
    b.record(_record("r1"))  # the same request recorded again, by another host
    (total,) = a.totals(date(2025, 6, 1))
    assert (total.requests, total.local_requests, total.cached_tokens) == (2, 1, 8)
    assert {t.key: t.requests for t in b.totals(date(2025, 6, 1), "session")} == {"(no session)": 1, "s1": 1}
    assert a.spent(session_id="s1") == pytest.approx(0.001)
    assert sorted(r.request_id for r in a.recent(10)) == ["r1", "r2"]
    assert a.identity() == b.identity()


def test_a_lost_race_is_retried_and_loses_nothing(hosts: list[S3SessionStore]) -> None:
    a, b, _ = (store.usage_ledger() for store in hosts)
    a.record(_record("r1"))  # a now holds the day object's ETag
    b.record(_record("r2"))  # ...which b's write makes stale
    a.record(_record("r3"))  # If-Match fails (412): a re-reads and writes again
    assert a.conflicts == 1
    (total,) = b.totals(date(2025, 6, 1))
    assert total.requests == 3 and total.cost_usd == pytest.approx(0.003)


def test_concurrent_writers_on_three_hosts_lose_no_record(hosts: list[S3SessionStore]) -> None:
    ledgers = [store.usage_ledger() for store in hosts]
    per_thread, threads_per_host = 8, 4
    errors: list[BaseException] = []

    def write(ledger: S3UsageLedger, name: str) -> None:
        try:
            for i in range(per_thread):
                day = "2025-06-01" if i % 2 else "2025-06-02"  # two day objects at once
                ledger.record(_record(f"{name}-{i}", day=day, session_id=name))
                if i == 3:
                    ledger.record(_record(f"{name}-{i}", day=day, session_id=name))  # a retry
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(ledger, f"h{h}t{t}"))
        for h, ledger in enumerate(ledgers)
        for t in range(threads_per_host)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    writers = len(threads)
    reader = S3SessionStore(bucket=hosts[0].bucket, endpoint_url=hosts[0].endpoint_url, prefix="shared/")
    try:
        ledger = reader.usage_ledger()
        (total,) = ledger.totals(date(2025, 6, 1))
        assert total.requests == writers * per_thread
        days = {t.key: t.requests for t in ledger.totals(date(2025, 6, 1), "day")}
        assert days == {"2025-06-01": writers * per_thread // 2, "2025-06-02": writers * per_thread // 2}
        sessions = ledger.totals(date(2025, 6, 1), "session")
        assert len(sessions) == writers and all(s.requests == per_thread for s in sessions)
        kept = {r.request_id for r in ledger.recent(1000)}
        assert kept == {f"h{h}t{t}-{i}" for h in range(3) for t in range(threads_per_host) for i in range(8)}
    finally:
        reader.close()


def _calls(store: S3SessionStore) -> list[str]:
    made: list[str] = []
    store.objects.client.meta.events.register("before-call.s3.*", lambda model, **_: made.append(model.name))
    return made


def test_a_query_costs_one_list_and_one_get_per_day_in_the_window(hosts: list[S3SessionStore]) -> None:
    writer = hosts[0].usage_ledger()
    first = date(2025, 5, 1)
    for n in range(40):  # 40 days with usage (2025-05-01 to 06-09), 3 records each
        day = (first + timedelta(days=n)).isoformat()
        for i in range(3):
            writer.record(_record(f"d{n}-{i}", day=day))
    reader = hosts[1].usage_ledger()
    made = _calls(hosts[1])
    assert reader.spent(since=date(2025, 6, 1)) == pytest.approx(9 * 3 * 0.001)  # June: 9 days
    assert sorted(made) == ["GetObject"] * 9 + ["ListObjectsV2"]
    made.clear()
    assert reader.spent(since=date(2025, 6, 8)) == pytest.approx(2 * 3 * 0.001)
    assert sorted(made) == ["GetObject"] * 2 + ["ListObjectsV2"]
    made.clear()
    assert reader.spent(session_id="s1") == pytest.approx(40 * 3 * 0.001)  # ever: every day
    assert sorted(made) == ["GetObject"] * 40 + ["ListObjectsV2"]


def test_a_day_keeps_its_latest_records_and_counts_them_all(hosts: list[S3SessionStore]) -> None:
    ledger = S3UsageLedger(hosts[0].objects, hosts[0].prefix, hosts[0]._executor, keep=3)
    for i in range(5):
        ledger.record(_record(f"r{i}", timestamp=f"2025-06-01T12:00:0{i}.000Z"))
    ledger.record(_record("y", day="2025-05-31"))
    (total,) = ledger.totals(date(2025, 5, 1))
    assert total.requests == 6
    assert [r.request_id for r in ledger.recent(10)] == ["r4", "r3", "r2"]  # no gap: stops there
    assert ledger.recent(10)[0] == _record("r4", timestamp="2025-06-01T12:00:04.000Z")


def test_a_damaged_day_object_is_a_clear_error(hosts: list[S3SessionStore]) -> None:
    ledger = hosts[0].usage_ledger()
    ledger.record(_record("r1"))
    raw = boto3.client("s3", endpoint_url=hosts[0].endpoint_url)
    key = "shared/usage/2025-06-01.json"
    assert json.loads(raw.get_object(Bucket=hosts[0].bucket, Key=key)["Body"].read())["ids"] == ["r1"]
    raw.put_object(Bucket=hosts[0].bucket, Key=key, Body=b"{not json")
    with pytest.raises(OblixError, match=r"usage ledger's day object s3://.*2025-06-01.json .* damaged"):
        hosts[1].usage_ledger().totals(date(2025, 6, 1))
    with pytest.raises(OblixError, match="damaged"):
        hosts[1].usage_ledger().record(_record("r2"))


def test_a_record_with_a_bad_timestamp_is_refused(hosts: list[S3SessionStore]) -> None:
    with pytest.raises(OblixError, match="must start with a date"):
        hosts[0].usage_ledger().record(_record("r1", timestamp="../../x"))
