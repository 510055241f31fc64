"""The write-behind writer is not woken per record (``oblix_core.usage.writer.LINGER``): it
writes what gathered on its own, and at once when a read, ``close()`` or the exit waits."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest

from oblix_core.usage import writer
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger

SINCE = date(2000, 1, 1)


def _record(n: int) -> UsageRecord:
    return UsageRecord(f"req_{n}", "scripted:tiny", True, 10, 2, 0.0, session_id="s")


def _written(path: Path) -> int:
    """Records in the ledger file as another reader sees them (not through the queue)."""
    ledger = SqliteUsageLedger(path)
    try:
        totals = ledger.totals(SINCE)
        return totals[0].requests if totals else 0
    finally:
        ledger.close()


def test_queued_records_are_written_without_any_read(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    ledger = WriteBehindLedger(SqliteUsageLedger(path))
    for n in range(3):
        ledger.record(_record(n))
    seen = threading.Event()
    for _ in range(1000):  # up to 10 s: the writer writes on its own, nobody waits for it
        if _written(path) == 3:
            seen.set()
            break
        seen.wait(0.01)
    assert seen.is_set()
    ledger.close()


def test_a_read_or_close_does_not_wait_for_the_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LINGER", 3600.0)  # the writer would sleep an hour on its own
    path = tmp_path / "usage.sqlite3"
    ledger = WriteBehindLedger(SqliteUsageLedger(path))
    ledger.record(_record(1))
    assert ledger.flush(30)  # False if the read had to wait for the hour
    assert _written(path) == 1
    ledger.record(_record(2))
    closer = threading.Thread(target=ledger.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive() and _written(path) == 2
