"""Usage records written behind the request path (``oblix_core.usage.writer``), on the real
SQLite ledger: ``record`` never waits for the ledger, reads see every record queued before
them, bursts are written in batches, failures are logged, and a normal exit writes the rest."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from oblix_core.client import OblixClient
from oblix_core.testing import ScriptedPlugin
from oblix_core.usage import writer
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.ledger import check_record as check_usage_record
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger, write_behind

SINCE = date(2000, 1, 1)


def _record(n: int) -> UsageRecord:
    return UsageRecord(f"req_{n}", "scripted:tiny", True, 10, 2, 0.0, session_id="s")


class HeldLedger(SqliteUsageLedger):
    """The SQLite ledger, with writes that wait for ``release`` and a log of each batch's size."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.batches: list[int] = []

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        self.release.wait()
        self.batches.append(len(records))
        super().record_many(records)


def test_record_returns_while_the_ledger_is_still_writing(tmp_path: Path) -> None:
    held = HeldLedger(tmp_path / "usage.sqlite3")
    ledger = WriteBehindLedger(held)
    for n in range(50):
        ledger.record(_record(n))  # would hang here if record waited for the held write
    assert held.batches == []
    held.release.set()
    assert ledger.totals(SINCE)[0].requests == 50  # a read waits for what was queued before it
    assert sum(held.batches) == 50 and len(held.batches) <= 2  # the burst went in one or two writes
    ledger.close()


def test_records_from_many_threads_all_count_once(tmp_path: Path) -> None:
    ledger = WriteBehindLedger(SqliteUsageLedger(tmp_path / "usage.sqlite3"))

    def burst(start: int) -> None:
        for n in range(start, start + 200):
            ledger.record(_record(n))
            ledger.record(_record(n))  # repeated request id: counts once

    threads = [threading.Thread(target=burst, args=(i * 200,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.totals(SINCE)[0].requests == 800
    assert ledger.spent() == 0.0
    assert len(ledger.recent(1000)) == 800
    ledger.close()
    assert SqliteUsageLedger(tmp_path / "usage.sqlite3").totals(SINCE)[0].requests == 800


def test_a_failing_ledger_is_logged_with_the_request_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(SqliteUsageLedger):
        def record_many(self, records: Sequence[UsageRecord]) -> None:
            raise OSError("disk full")

    ledger = WriteBehindLedger(Broken(tmp_path / "usage.sqlite3"))
    with caplog.at_level(logging.WARNING, logger="oblix_core.usage.writer"):
        ledger.record(_record(7))
        assert ledger.flush(10)
    assert "req_7" in caplog.text and "disk full" in caplog.text and "not recorded" in caplog.text
    ledger.close()


def test_a_normal_exit_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    script = f"""
import threading
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger

class Slow(SqliteUsageLedger):
    def record_many(self, records):
        threading.Event().wait(0.05)  # still writing when the interpreter starts to exit
        super().record_many(records)

ledger = WriteBehindLedger(Slow({str(path)!r}))
for n in range(300):
    ledger.record(UsageRecord(f"req_{{n}}", "scripted:tiny", True, 1, 1, 0.0))
"""  # never closed: the exit handler writes the rest
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert SqliteUsageLedger(path).totals(SINCE)[0].requests == 300


def test_a_ledger_that_never_blocks_is_not_wrapped(tmp_path: Path) -> None:
    wrapped = write_behind(SqliteUsageLedger(tmp_path / "usage.sqlite3"))
    assert isinstance(wrapped, WriteBehindLedger) and not wrapped.blocking
    assert write_behind(wrapped) is wrapped
    wrapped.close()


@pytest.mark.anyio
async def test_answers_are_counted_without_a_worker_thread_hop(tmp_path: Path) -> None:
    """An answer that stores nothing records its usage on the event loop, through the queue
    (before, each answer took a worker-thread round trip for the ledger's write)."""
    import anyio.to_thread

    async with OblixClient(home=tmp_path, plugins=[ScriptedPlugin()]) as client:
        await client.hook_model("scripted", "local")
        assert isinstance(client.usage_ledger, WriteBehindLedger)
        hops = []
        original = anyio.to_thread.run_sync

        async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(func)
            return await original(func, *args, **kwargs)

        anyio.to_thread.run_sync = counting  # type: ignore[assignment]
        try:
            results = [await client.execute(f"q{n}", stream=False, store=False) for n in range(5)]
        finally:
            anyio.to_thread.run_sync = original
        # (the agents' first readings may be saved in a worker thread: not the answer's)
        assert [f.__name__ for f in hops if f.__name__ != "_persisted"] == []
        recorded = {r.request_id for r in client.usage_ledger.recent(10)}
        assert recorded == {r["request_id"] for r in results}


# -- a ledger that refuses writes (a full disk, Redis out of memory) --------------------------------


class Refusing(SqliteUsageLedger):
    """The SQLite ledger whose writes fail while ``refusing`` is set, as SQLite's do on a full
    disk (a test double of the disk: tests/reliability/test_ledger_full_disk.py fills a real one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refusing = threading.Event()
        self.refusing.set()

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        if self.refusing.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        super().record_many(records)


def _priced(n: int, day: str = "2025-06-01", session: str = "s") -> UsageRecord:
    return UsageRecord(f"req_{n}", "openai:gpt-4o", False, 100, 20, 0.25, f"{day}T10:00:00.000Z", session)


def test_records_a_failing_ledger_refused_count_until_written_then_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a record the ledger refused was logged and dropped: on a full disk every answer
    went unrecorded and a budget never closed. Now it is kept, counted by this process's reads
    (budgets, reports) and written once the ledger takes writes again."""
    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.05)
    refusing = Refusing(tmp_path / "usage.sqlite3")
    ledger = WriteBehindLedger(refusing)
    with caplog.at_level(logging.WARNING, logger="oblix_core.usage.writer"):
        for n in range(3):
            ledger.record(_priced(n, session="a" if n else "b"))
        assert ledger.spent() == pytest.approx(0.75)  # the reads wait for the write, which failed
    assert "not recorded yet (requests req_0, req_1, req_2)" in caplog.text and "disk is full" in caplog.text
    assert ledger.spent(session_id="a") == pytest.approx(0.5)
    assert ledger.spent(since=date(2025, 6, 2)) == 0.0
    assert ledger.totals(SINCE)[0].requests == 3
    assert {t.key: t.requests for t in ledger.totals(SINCE, "session")} == {"a": 2, "b": 1}
    assert {r.request_id for r in ledger.recent(10)} == {"req_0", "req_1", "req_2"}
    assert SqliteUsageLedger(tmp_path / "usage.sqlite3").totals(SINCE)[0].requests == 0  # not on disk
    refusing.refusing.clear()  # the disk has room again
    deadline = time.monotonic() + 30
    while SqliteUsageLedger(tmp_path / "usage.sqlite3").totals(SINCE)[0].requests < 3:
        assert time.monotonic() < deadline, "the refused records were never written again"
        time.sleep(0.02)
    assert ledger.spent() == pytest.approx(0.75)  # written: counted once
    assert ledger.totals(SINCE)[0].requests == 3 and "refused" not in repr(ledger)
    ledger.close()


def test_a_record_at_fault_is_lost_alone_and_the_rest_still_refused_are_lost_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid record (what no ledger can take) is lost at once, logged; the valid ones of its
    batch are written. Records still refused when the ledger closes are named in the log."""

    class Checking(SqliteUsageLedger):
        def record_many(self, records: Sequence[UsageRecord]) -> None:
            for record in records:
                check_usage_record(record)
            super().record_many(records)

    ledger = WriteBehindLedger(Checking(tmp_path / "usage.sqlite3"))
    bad = UsageRecord("req_bad", "openai:gpt-4o", False, -5, 20, 0.25)
    with caplog.at_level(logging.WARNING, logger="oblix_core.usage.writer"):
        for record in (_priced(1), bad, _priced(2)):
            ledger.record(record)
        assert ledger.totals(SINCE)[0].requests == 2
    assert "not recorded (requests req_bad)" in caplog.text and "not a token count" in caplog.text
    ledger.close()

    caplog.clear()
    refusing = Refusing(tmp_path / "refusing.sqlite3")
    ledger = WriteBehindLedger(refusing)
    with caplog.at_level(logging.WARNING, logger="oblix_core.usage.writer"):
        ledger.record(_priced(3))
        assert ledger.spent() == pytest.approx(0.25)
        ledger.close()
    assert "not recorded (requests req_3)" in caplog.text
    assert "still refused when the ledger was closed" in caplog.text
