"""Edges of the request-path changes of issue 20 (found by a red-team pass): the write-behind usage ledger
(``oblix_core.usage.writer``), ids from a random pool, shared health read only when it
changed (``HealthStore.version``), and the shared window fits.

Real components only: the SQLite ledger on real files (another connection holding SQLite's
write lock stands in for a slow or busy writer, deterministically), the file health
store, the scripted backend. No assertion is about time; where a test must let a buggy
path show itself it waits a bounded while for the correct outcome instead.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix_core.client import OblixClient
from oblix_core.models.health import HEALTH_FILE, CircuitBreaker, FileHealthStore, ModelHealth
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.request.context import new_request_id
from oblix_core.sessions.records import new_message_id, new_session_id
from oblix_core.testing import ScriptedPlugin
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import WriteBehindLedger
from tests.conftest import FAST

SINCE = date(2000, 1, 1)
CLOUD = "scripted:gpt-4o-mini"


def _record(name: str, **changes: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": f"req_{name}",
        "model_id": "scripted:tiny",
        "local": True,
        "input_tokens": 10,
        "output_tokens": 2,
        "cost_usd": 0.0,
        "session_id": "s",
    }
    return UsageRecord(**(fields | changes))


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """SQLite's write lock on ``path``, held by another connection (as another process's
    writer in the middle of a transaction would hold it) until the block ends or the
    caller rolls back. Readers (WAL) are not blocked; the ledger's writer waits."""
    ready = SqliteUsageLedger(path)
    ready.totals(SINCE)  # the schema exists (and WAL mode) before locking
    ready.close()
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


def _requests_in(path: Path) -> set[str]:
    reader = SqliteUsageLedger(path)
    try:
        return {r.request_id for r in reader.recent(10_000)}
    finally:
        reader.close()


# -- the write-behind ledger ---------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_two_clients_on_one_home_see_each_others_spend_before_admitting(home: Path) -> None:
    """The budget gate is per ledger identity (one process-wide lock per ledger), so that
    clients of one process sharing a ledger admit cloud requests one at a time, each after
    reading what the previous one spent. With write-behind each client has its own queue and
    a read waits only for its own: client B reads the ledger while A's record is still
    queued, and is admitted past a spent daily budget (before d86f963 the record was written
    before A's request returned). The docs promise "a process always reads its own answers"."""
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 0.0000001\n")
    first = OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST)
    second = OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST)
    for client in (first, second):
        await client.hook_model("scripted", "gpt-4o-mini", local=False)
    outcome: list[str] = []
    try:
        ledger = first.usage_ledger
        assert isinstance(ledger, WriteBehindLedger) and isinstance(ledger.ledger, SqliteUsageLedger)
        with write_lock(ledger.ledger.path) as lock:  # A's writer cannot commit yet
            answered = await first.execute("hello", stream=False, store=False)
            assert answered["model_id"] == CLOUD and answered["metrics"]["cost_usd"] > 0.0000001
            finished = anyio.Event()

            async def ask_second() -> None:
                try:
                    result = await second.execute("hello again", stream=False, store=False)
                    outcome.append(result["model_id"])
                except BudgetExceededError:
                    outcome.append("refused")
                finally:
                    finished.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ask_second)
                # buggy: B answers at once from a stale read; correct: B waits for A's record,
                # which is written once the lock goes (after this bounded wait)
                with anyio.move_on_after(5):
                    await finished.wait()
                lock.execute("ROLLBACK")
        assert outcome == ["refused"], "the second client spent past the daily budget"
    finally:
        for client in (first, second):
            await client.shutdown()


def test_one_bad_record_does_not_lose_the_records_written_with_it(tmp_path: Path) -> None:
    """Before write-behind each answer's record was written alone, so a record the ledger
    cannot take (here an integer SQLite cannot hold) lost only itself. Now a burst is one
    transaction: its rollback loses every other request's record of the batch, with only a
    warning (the default ``UsageLedger.record_many`` — Redis, S3, third-party ledgers — stops
    at the first failure the same way)."""
    path = tmp_path / "usage.sqlite3"
    ledger = WriteBehindLedger(SqliteUsageLedger(path))
    with write_lock(path):  # the writer is held: the records below go out together
        ledger.record(_record("a"))
        ledger.record(_record("bad", input_tokens=2**63))
        ledger.record(_record("b"))
        ledger.record(_record("c"))
    assert ledger.flush(30)
    ledger.close()
    assert _requests_in(path) == {"req_a", "req_b", "req_c"}


def test_flush_waits_for_what_was_queued_before_it_not_for_later_records(tmp_path: Path) -> None:
    """Reads (``totals``, ``spent``: budgets before every cloud request) are documented to
    wait for what was queued *before* them; ``flush`` waits until the queue is empty and
    nothing is being written. While answers keep arriving during each write (a busy server),
    the queue is never empty at the end of a write and a read waits for all of them: here
    one more answer arrives during each write, and the read of the one record queued before
    it returns only when the answers stop (it should return after that record's write; the
    later writes wait, a bounded while, for the read to return)."""
    writes: list[str] = []
    arriving = iter(range(5))
    read_returned = threading.Event()

    class Busy(SqliteUsageLedger):
        """The real SQLite ledger; one more answer is recorded while each batch is written."""

        def record_many(self, records: Sequence[UsageRecord]) -> None:
            gate.wait()
            if records[0].request_id != "req_before":
                read_returned.wait(2)  # bounded: the buggy read never returns meanwhile
            super().record_many(records)
            writes.extend(r.request_id for r in records)
            n = next(arriving, None)
            if n is not None:
                wrapper.record(_record(f"later_{n}"))

    gate = threading.Event()
    path = tmp_path / "usage.sqlite3"
    wrapper = WriteBehindLedger(Busy(path))
    wrapper.record(_record("before"))  # the writer takes it and waits at the gate
    _until_writing(wrapper)
    with wrapper._changed:  # (re-entrant) nothing more is queued until the read waits
        gate.set()
        assert wrapper.flush(120)
        written_when_read = list(writes)
    read_returned.set()
    for _ in range(100):  # until the later records are written too
        if len(writes) == 6:
            break
        wrapper.flush(60)
    wrapper.close()
    assert len(writes) == 6, "every record was written"
    assert written_when_read == ["req_before"], (
        f"the read of one queued record waited for {len(written_when_read)} writes, "
        "of records queued after it"
    )


_FORK_CHILD_WAIT = 10.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_its_own_records(tmp_path: Path) -> None:
    """records.py takes care that a forked child starts afresh; the write-behind ledger does
    not. A child forked while the parent's writer thread exists inherits ``_writer`` (a
    thread that does not exist in the child), so ``record`` never starts a writer there: the
    child's records stay queued until that child happens to read the ledger or exits
    normally, and a child that ends with ``os._exit`` (multiprocessing's fork workers,
    gunicorn/celery prefork) loses them. Other processes and budgets never see them."""
    path = tmp_path / "usage.sqlite3"
    gate = threading.Event()

    class Held(SqliteUsageLedger):
        """The real SQLite ledger, whose writes wait for ``gate`` (no SQLite lock is held
        across the fork: SQLite connections must not cross a fork)."""

        def record_many(self, records: Sequence[UsageRecord]) -> None:
            gate.wait()
            super().record_many(records)

    ledger = WriteBehindLedger(Held(path))
    ledger.record(_record("parent"))  # the parent's writer thread now exists, held at the gate
    _until_writing(ledger)  # (forking while it holds the queue's lock would hang the child)
    pid = os.fork()
    if pid == 0:  # the child: record one answer, then wait (bounded) to see it written
        code = 1
        try:
            gate.set()
            ledger.record(_record("child"))
            code = 0 if _seen_within(path, "req_child", _FORK_CHILD_WAIT) else 3
        finally:
            os._exit(code)
    gate.set()
    _, status = os.waitpid(pid, 0)
    assert ledger.flush(30)
    ledger.close()
    assert "req_parent" in _requests_in(path)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's record was never written"


def _until_writing(ledger: WriteBehindLedger) -> None:
    """Until the writer has taken every queued record and let go of the queue's lock."""
    pause = threading.Event()
    while True:
        with ledger._changed:
            if not ledger._queued and ledger._done < ledger._accepted:  # a batch in the writer's hands
                return
        pause.wait(0.01)


def _seen_within(path: Path, request_id: str, seconds: float) -> bool:
    """Whether another connection sees ``request_id`` in the ledger within ``seconds``."""
    done = threading.Event()
    for _ in range(int(seconds / 0.05)):
        if request_id in _requests_in(path):
            return True
        done.wait(0.05)
    return request_id in _requests_in(path)


def test_a_record_after_close_is_still_written(tmp_path: Path) -> None:
    """A late answer (a request that ends while the client shuts down) is not lost: the
    writer starts again and the SQLite ledger reopens its connection."""
    path = tmp_path / "usage.sqlite3"
    ledger = WriteBehindLedger(SqliteUsageLedger(path))
    ledger.record(_record("early"))
    ledger.close()
    ledger.record(_record("late"))
    assert ledger.flush(30)
    ledger.close()
    assert _requests_in(path) == {"req_early", "req_late"}


# -- ids -------------------------------------------------------------------------------------


def test_ids_from_the_pool_are_unique_across_threads_and_well_formed() -> None:
    found: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [new_request_id() for _ in range(700)] + [new_message_id() for _ in range(700)]
        mine += [new_session_id() for _ in range(300)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == len(found)
    sessions = [i for i in found if not i.startswith(("req_", "msg_"))]
    assert all(uuid.UUID(s).version == 4 and str(uuid.UUID(s)) == s for s in sessions)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_repeats_the_parents_next_ids() -> None:
    new_request_id()  # the pool is filled in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, "".join(new_request_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    os.waitpid(pid, 0)
    mine = "".join(new_request_id() for _ in range(4))
    assert len(theirs) == len(mine) and not set(theirs.split("req_")[1:]) & set(mine.split("req_")[1:])


# -- shared health read only when it changed -----------------------------------------------


def _scripted(name: str, endpoint: str) -> Any:
    from oblix_core.testing.scripted import ScriptedBackend

    return ScriptedBackend(name, endpoint=endpoint, local=False)


def _route_time_sync(breaker: CircuitBreaker, models: Sequence[Any]) -> None:
    """What ``ResponseStream._plan`` does before routing."""
    breaker.watch(models)
    if breaker.shares_health and breaker.stale():
        breaker.sync()


def test_a_model_rehooked_at_another_endpoint_reads_that_endpoints_shared_health(tmp_path: Path) -> None:
    """Shared records are keyed by model id *and* endpoint, but ``watch`` forgets the synced
    version only when the set of model ids changes. A model unhooked and hooked again at
    another endpoint (same id) is routed without the shared record of its new endpoint,
    which another process marked as cooling (every request read it before 54a1656)."""
    path = tmp_path / HEALTH_FILE
    other = CircuitBreaker(3, 60.0, FileHealthStore(path))  # another process, on endpoint B
    other.watch([_scripted("m", "http://127.0.0.1:9/b")])
    other.record_failure("scripted:m", at_once=True, error="HTTP 503")
    assert other.flush()
    mine = CircuitBreaker(3, 60.0, FileHealthStore(path))
    _route_time_sync(mine, [_scripted("m", "http://127.0.0.1:9/a")])  # routed once, at endpoint A
    assert mine.available("scripted:m")  # endpoint A has no record: right
    _route_time_sync(mine, [_scripted("m", "http://127.0.0.1:9/b")])  # re-hooked at endpoint B
    assert not mine.available("scripted:m"), "endpoint B's shared cooldown was never read"


def test_a_change_with_the_same_inode_mtime_and_size_is_still_seen(tmp_path: Path) -> None:
    """``version()`` is (inode, mtime, size). Every update replaces the file, and the freed
    inode comes back at the next-but-one replacement (ext4 here: two inodes in turn); on a
    filesystem whose timestamps are coarser than the writes (ext4's jiffy, NFS, 1-2 s on
    HFS+/FAT; simulated here with ``os.utime``), two updates later with the same size the
    stamp is the one already synced, and a cooldown another process recorded is never read
    (until some later change). A "racy stamp" (mtime too recent to trust) must count as
    changed."""
    path = tmp_path / HEALTH_FILE
    endpoint = "http://127.0.0.1:9/a"
    key = f"scripted:m|{endpoint}"
    writer = FileHealthStore(path)
    now = time.time()
    cooling = ModelHealth(
        endpoint, cooling_since=now, cooling_until=now + 600, reason="HTTP 503", last_check_at=now
    ).to_dict()
    in_service = ModelHealth(endpoint, failures=1, updated_at=now - 1).to_dict()
    in_service["last_check"] = "x" * (len(json.dumps(cooling)) - len(json.dumps(in_service)))
    assert len(json.dumps(in_service)) == len(json.dumps(cooling))
    writer.save(key, in_service)
    synced_stat = os.stat(path)
    model = _scripted("m", endpoint)
    mine = CircuitBreaker(3, 60.0, FileHealthStore(path))
    _route_time_sync(mine, [model])
    assert mine.available("scripted:m")
    writer.save(key, in_service | {"failures": 2})  # another process's updates, the last
    writer.save(key, cooling)  # a cooldown, all within one timestamp tick
    os.utime(path, ns=(synced_stat.st_atime_ns, synced_stat.st_mtime_ns))
    # (where the filesystem hands the inode back, as ext4 does here, the stamp now repeats)
    _route_time_sync(mine, [model])
    assert not mine.available("scripted:m"), "the cooldown written since was never read"
