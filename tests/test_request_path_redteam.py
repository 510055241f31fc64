"""Red team of the optimized request path: promises the speed-ups must keep.

Real components (the file store, the SQLite usage ledger behind the write-behind queue) and
the scripted model backend, a test double (``oblix_core.testing``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.testing import ScriptedPlugin
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger

SINCE = date(2000, 1, 1)


class Refusing(SqliteUsageLedger):
    """The SQLite ledger refusing every write, as on a full disk (a test double of the disk)."""

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def record(self, record: UsageRecord) -> None:
        self.record_many([record])


def _refuse_writes(client: OblixClient) -> None:
    """Make ``client``'s ledger refuse writes (its write-behind queue then keeps the records)."""
    ledger = client.usage_ledger
    assert isinstance(ledger, WriteBehindLedger)
    ledger.ledger.record_many = Refusing.record_many.__get__(ledger.ledger)  # type: ignore[method-assign]
    ledger.ledger.record = Refusing.record.__get__(ledger.ledger)  # type: ignore[method-assign]


def test_a_record_offered_twice_while_the_ledger_refuses_counts_once(tmp_path: Path) -> None:
    """The ledger keeps one record per request id; the records it refused, kept in memory, must
    count the same way (before: each copy counted, $1.00 spent for one $0.50 answer)."""
    ledger = WriteBehindLedger(Refusing(tmp_path / "usage.sqlite3"))
    record = UsageRecord("req_1", "openai:gpt-4o", False, 100, 20, 0.5, session_id="s")
    for _ in range(2):
        ledger.record(record)
        ledger.flush(10)
    assert ledger.spent() == pytest.approx(0.5)
    assert ledger.spent(session_id="s") == pytest.approx(0.5)
    assert ledger.totals(SINCE)[0].requests == 1
    assert [r.request_id for r in ledger.recent(10)] == ["req_1"]
    ledger.close()


@pytest.mark.anyio
async def test_a_replayed_answer_is_counted_once_while_the_ledger_refuses(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """A retry with the same idempotency key offers the first answer's usage record again (for a
    process killed before writing it). While the ledger refused writes, both copies counted:
    budgets and ``oblix usage`` saw two answers where one was given."""
    await client.hook_model("scripted", "gpt-4o", local=False)  # priced as gpt-4o
    _refuse_writes(client)
    sid = await client.create_session()
    first = await client.execute("hello", session_id=sid, stream=False, idempotency_key="k-1")
    again = await client.execute("hello", session_id=sid, stream=False, idempotency_key="k-1")
    assert again["metrics"].get("replayed") and len(scripted.calls["gpt-4o"]) == 1
    cost = first["metrics"]["cost_usd"]
    assert cost > 0
    assert client.usage_ledger.spent() == pytest.approx(cost)
    assert client.usage(since=SINCE)["total"]["requests"] == 1
