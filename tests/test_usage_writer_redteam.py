"""Red team of the write-behind usage queue while the ledger refuses writes
(``oblix_core.usage.writer``): a real ``redis-server`` out of memory (``maxmemory`` with
``noeviction``: writes refused, reads served), and the SQLite ledger held mid-write.

Each test names what failed before its fix."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest
import redis

from oblix_core.usage import writer
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger
from oblix_redis.ledger import RedisUsageLedger
from tests import redis_servers
from tests.redis_servers import RedisServer, unique_prefix

redis_server = redis_servers.redis_server  # the slow tier: a real redis-server

SINCE = date(2000, 1, 1)
LOGGER = "oblix_core.usage.writer"


@pytest.fixture
def full(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the server, which refuses writes (out of memory) until ``room`` is called."""
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # used memory is always over: every write refused
    yield client
    room(client)


def room(client: redis.Redis) -> None:
    client.config_set("maxmemory", "0")


def script_runs(client: redis.Redis) -> int:
    """How many times the ledger's write script ran or was refused since the last reset."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


def _priced(n: int, session: str = "s") -> UsageRecord:
    return UsageRecord(f"req_{n}", "openai:gpt-4o", False, 100, 20, 0.25, "2025-06-01T10:00:00.000Z", session)


def _stored(client: redis.Redis, prefix: str) -> float:
    return RedisUsageLedger(client, prefix).spent()


def test_closing_with_many_refused_records_does_not_try_each_one(
    full: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every try of the refused records (each retry, close, exit) wrote all of them at
    once and then each alone: 2 000 refused records cost 2 001 refused writes per try (the
    writer busy for seconds on a remote Redis, every read of a budget waiting behind it). Now
    a try stops at the first batch the ledger refuses outright."""
    ledger = WriteBehindLedger(RedisUsageLedger(full, unique_prefix()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(2000):
            ledger.record(_priced(n))
        assert ledger.spent() == pytest.approx(500.0)  # all refused, all counted
        full.config_resetstat()
        ledger.close()
    assert script_runs(full) <= 10
    lost = [r for r in caplog.records if "still refused when the ledger was closed" in r.getMessage()]
    assert lost and all(f"req_{n}" in " ".join(r.getMessage() for r in lost) for n in (0, 1999))


def test_a_ledger_that_keeps_refusing_is_reported_once_not_per_answer(
    full: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, each refused batch logged its own warning: sequential answers on a full ledger
    logged one warning each (a log flood, onto what is often the same full disk)."""
    ledger = WriteBehindLedger(RedisUsageLedger(full, unique_prefix()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(30):
            ledger.record(_priced(n))
            assert ledger.spent() == pytest.approx(0.25 * (n + 1))
    refused = [r for r in caplog.records if "not recorded yet" in r.getMessage()]
    assert len(refused) == 1 and "req_0" in refused[0].getMessage()
    room(full)
    ledger.close()


def test_records_refused_until_the_ledger_recovers_mid_pass_are_not_lost(
    full: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a record refused while memory was short was lost ("at fault") as soon as a
    record after it in the same one-by-one pass was written, i.e. whenever Redis got room in
    the middle of a pass (another client deleting keys, memory raised)."""
    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(writer, "LINGER", 0.5)  # the four records are written as one batch
    prefix = unique_prefix()

    class RoomMidPass(RedisUsageLedger):
        """The Redis ledger; the server gets room once req_1 has been refused in the pass
        that writes records one by one (as when another client frees memory then)."""

        def record(self, record: UsageRecord) -> None:
            try:
                super().record(record)
            except redis.exceptions.OutOfMemoryError:
                if record.request_id == "req_1":  # refused, then room for the next ones
                    room(full)
                raise

    ledger = WriteBehindLedger(RoomMidPass(full, prefix))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(4):
            ledger.record(_priced(n))
        ledger.flush()
        ledger.close()  # the kept records are written once more: the server has room now
    assert "not recorded (requests" not in caplog.text
    assert _stored(full, prefix) == pytest.approx(1.0)


class HeldRetry(SqliteUsageLedger):
    """The SQLite ledger refusing writes (as on a full disk) while ``refusing`` is set; a write
    while ``hold`` is set waits in the ledger for ``go`` first (a slow remote ledger), after
    saying so (``inside``). A test double of a slow, full ledger."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refusing, self.hold = threading.Event(), threading.Event()
        self.inside, self.go = threading.Event(), threading.Event()
        self.refusing.set()

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        if self.hold.is_set():
            self.inside.set()
            self.go.wait(30)
        if self.refusing.is_set():
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        super().record_many(records)


def test_a_record_being_written_again_still_counts_for_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the writer took the refused records out of the list reads count while it wrote
    them again: a budget read during the retry saw none of them (0 of $0.50 spent)."""
    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.05)
    inner = HeldRetry(tmp_path / "usage.sqlite3")
    ledger = WriteBehindLedger(inner)
    ledger.record(_priced(1))
    ledger.record(_priced(2))
    assert ledger.spent() == pytest.approx(0.5)
    inner.hold.set()  # the next retry waits inside the ledger
    assert inner.inside.wait(30)
    seen: list[float] = []
    reader = threading.Thread(target=lambda: seen.append(ledger.spent()))
    reader.start()
    reader.join(0.5)  # a read during the retry (it may wait for the retry to end)
    inner.hold.clear()
    inner.go.set()  # the retry is refused again
    reader.join(30)
    assert seen == [pytest.approx(0.5)]
    inner.refusing.clear()
    ledger.close()
    assert SqliteUsageLedger(tmp_path / "usage.sqlite3").spent() == pytest.approx(0.5)


def test_a_record_landing_during_a_read_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a read took the refused records, then read the ledger: a retry landing between
    the two was counted twice ($1.00 for $0.50 spent: a budget closed early)."""
    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.05)
    landed = threading.Event()

    class LandsMidRead(HeldRetry):
        """Its reads wait (at most 2 s) for a retry to land before reading."""

        def record_many(self, records: Sequence[UsageRecord]) -> None:
            super().record_many(records)
            landed.set()

        def spent(self, since: date | None = None, session_id: str | None = None) -> float:
            if not self.refusing.is_set():
                landed.wait(2)
            return super().spent(since, session_id)

    inner = LandsMidRead(tmp_path / "usage.sqlite3")
    ledger = WriteBehindLedger(inner)
    ledger.record(_priced(1))
    ledger.record(_priced(2))
    assert ledger.spent() == pytest.approx(0.5)
    inner.refusing.clear()  # room again: the next retry lands (during the read below)
    assert ledger.spent() == pytest.approx(0.5)
    ledger.close()
    assert SqliteUsageLedger(tmp_path / "usage.sqlite3").spent() == pytest.approx(0.5)


def _damage(path: Path) -> None:
    """Overwrite the ledger file's pages after the first (its rows) with garbage, as a bad disk
    block would, once everything is in the main file (no write-ahead log to read them from)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(path, "r+b") as file:
        file.seek(4096)
        file.write(b"\xff" * 3 * 4096)


def test_records_refused_by_a_damaged_ledger_land_in_the_one_another_process_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the SQLite ledger kept each thread's connection to the damaged file after
    `oblix usage --repair` (another process) moved it aside: every read still raised
    LedgerDamagedError (budgets fail closed: no cloud request at all) and the records it had
    refused were never written to the fresh ledger, then lost at close."""
    from oblix_core.usage.ledger import LedgerDamagedError

    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.05)
    path = tmp_path / "usage.sqlite3"
    ledger = WriteBehindLedger(SqliteUsageLedger(path))
    ledger.record(_priced(0))
    assert ledger.spent() == pytest.approx(0.25)
    _damage(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ledger.record(_priced(1))
        ledger.record(_priced(2))
        with pytest.raises(LedgerDamagedError):
            ledger.spent()
        assert "not recorded yet (requests req_1, req_2)" in caplog.text
        print(SqliteUsageLedger(path).repair())  # what `oblix usage --repair` does, elsewhere
        deadline = time.monotonic() + 30
        while {r.request_id for r in SqliteUsageLedger(path).recent(10)} < {"req_1", "req_2"}:
            assert time.monotonic() < deadline, "the refused records never reached the fresh ledger"
            time.sleep(0.02)
        assert ledger.spent() == pytest.approx(SqliteUsageLedger(path).spent())  # each once
        ledger.close()
    assert "not recorded (requests" not in caplog.text


def test_records_being_written_again_at_exit_are_named_not_dropped_silently(tmp_path: Path) -> None:
    """Before, a retry under way when the interpreter exited held its records outside the
    refused list: the exit's last try found none, the writer thread died with them, and
    nothing said they were lost."""
    script = f"""
import logging, sqlite3, sys, threading, time
from oblix_core.usage import writer
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger
logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
writer.RETRY_SECONDS = 0.05
slow, inside = threading.Event(), threading.Event()

class SlowFull(SqliteUsageLedger):  # a test double: a slow ledger on a full disk
    def record_many(self, records):
        if slow.is_set():
            inside.set()
            time.sleep(0.5)
        raise sqlite3.OperationalError("database or disk is full")

ledger = WriteBehindLedger(SlowFull({str(tmp_path / "usage.sqlite3")!r}))
for n in (1, 2):
    ledger.record(UsageRecord(f"req_{{n}}", "openai:gpt-4o", False, 100, 20, 0.25))
assert ledger.spent() == 0.5
slow.set()
assert inside.wait(30)  # the interpreter exits during the retry
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not recorded (requests req_1, req_2)" in done.stdout


def test_one_sessions_refused_records_do_not_hold_back_the_others(
    full: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass record by record stops after 3 refusals in a row (a ledger refusing everything);
    one session's records refused for their own sake (its Redis counter overwritten with text)
    must not stop the others' from being written: a record from the batch's other end decides."""
    room(full)
    prefix = unique_prefix()
    full.hset(f"{prefix}{{#usage}}:d:2025-06-01", "s|bad|cost", "not a number")
    ledger = WriteBehindLedger(RedisUsageLedger(full, prefix))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(8):
            ledger.record(_priced(n, session="bad" if n < 4 else "good"))
        assert ledger.spent() == pytest.approx(2.0)  # the ledger's 1.0 and the refused 1.0
        assert ledger.spent(session_id="good") == pytest.approx(1.0)
        ledger.close()
    assert RedisUsageLedger(full, prefix).spent(session_id="good") == pytest.approx(1.0)
    lost = " ".join(r.getMessage() for r in caplog.records if "not recorded (requests" in r.getMessage())
    assert all(f"req_{n}" in lost for n in range(4)) and "holds not a number" in lost


def test_records_dropped_over_the_bound_are_named_without_a_line_per_answer(
    full: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, once MAX_UNWRITTEN records waited, every refused batch dropped the oldest with a
    warning of its own: a line per answer for as long as the ledger refused."""
    monkeypatch.setattr(writer, "MAX_UNWRITTEN", 10)
    ledger = WriteBehindLedger(RedisUsageLedger(full, unique_prefix()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(50):
            ledger.record(_priced(n))
            assert ledger.spent() == pytest.approx(0.25 * min(n + 1, 10))  # the newest 10 kept
        lines = [r.getMessage() for r in caplog.records if "not recorded (requests" in r.getMessage()]
        assert len(lines) == 1 and "req_0" in lines[0]
        ledger.close()
    lost = " ".join(r.getMessage() for r in caplog.records if "not recorded (requests" in r.getMessage())
    assert all(f"req_{n}," in lost or f"req_{n} " in lost or f"req_{n})" in lost for n in range(50))
    assert len([r for r in caplog.records if "not recorded (requests" in r.getMessage()]) <= 3
