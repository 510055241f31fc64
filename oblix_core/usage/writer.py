"""Usage records written behind the request path: :meth:`record` returns at once.

Every client's ledger is wrapped in a :class:`WriteBehindLedger`. An answered request
queues its record; one background thread per ledger writes what is queued, in batches
(:meth:`~oblix_core.usage.ledger.UsageLedger.record_many`: one SQLite transaction...), so no
request waits for the ledger's I/O and a burst of requests costs a few writes. A record does
not wake the thread: it wakes every :data:`LINGER` seconds and writes what gathered meanwhile
(sequential requests would otherwise wake it, and make it compete for the GIL, once each),
or at once when a read, ``close()`` or the exit waits for it. A batch
that fails is written again record by record, so one bad record loses only itself.

Reads (``totals``, ``spent``, ``recent``: reports and budgets) first wait until every
record queued before them is written — by any client of this process on the same
ledger (:meth:`~oblix_core.usage.ledger.UsageLedger.identity`) — so a process always reads its
own answers. Another process sees a record once it is written, normally within
:data:`LINGER` seconds. ``close()`` and the interpreter's normal exit write what is left; a
process killed outright (``SIGKILL``, power loss) can lose the records of its last
instants, unless its caller waited for them (``ResponseStream.recorded()``, which ``oblix
server`` awaits before an answer's end goes out). A forked child starts with an empty queue
of its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import date

from oblix_core.usage.ledger import UsageLedger, UsageRecord, UsageTotals

log = logging.getLogger(__name__)

#: Seconds an idle writer thread waits for records before it ends (a new one starts on demand).
IDLE_SECONDS = 2.0
#: Seconds a queued record waits for others to be written with it (unless a read waits for it).
LINGER = 0.005
#: At most this many records per write.
BATCH = 500
#: How long a normal interpreter exit waits for a ledger's queue to be written (seconds).
EXIT_WAIT = 10.0

_LIVE: weakref.WeakSet[WriteBehindLedger] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _live() -> list[WriteBehindLedger]:
    with _LIVE_LOCK:
        return list(_LIVE)


class WriteBehindLedger(UsageLedger):
    """``ledger`` with non-blocking :meth:`record` (see the module docstring)."""

    blocking = False

    def __init__(self, ledger: UsageLedger) -> None:
        self.ledger = ledger
        self.name = ledger.name
        self._identity = ledger.identity()
        self._fresh_state()
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _fresh_state(self, closed: bool = False) -> None:
        self._changed = threading.Condition()
        self._queued: list[UsageRecord] = []
        self._accepted = 0  # records taken by record() so far
        self._done = 0  # of those, written (or failed and logged)
        self._waiting = 0  # reads (flush, close, exit) waiting for the writer: it writes at once
        self._writer: threading.Thread | None = None
        self._closed = closed

    def record(self, record: UsageRecord) -> None:
        """Queue ``record``; the writer thread writes it shortly (see the module docstring)."""
        with self._changed:
            if self._closed:  # after close(): written here, never beside close()
                self._write([record])
                return
            self._queued.append(record)
            self._accepted += 1
            if self._writer is None:  # else the writer takes it within LINGER: no wake-up here
                self._writer = threading.Thread(target=self._write_queued, name="oblix-usage", daemon=True)
                self._writer.start()

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            self.record(record)

    def _urgent(self) -> bool:
        return self._closed or bool(self._queued and self._waiting)

    def _write_queued(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(self._urgent, LINGER)  # records gather meanwhile
                if not self._queued:
                    if self._closed or time.monotonic() - idle_since >= IDLE_SECONDS:
                        self._writer = None  # idle for a while, or closed with nothing left
                        self._changed.notify_all()
                        return
                    continue
                batch, self._queued = self._queued[:BATCH], self._queued[BATCH:]
            self._write(batch)
            with self._changed:
                self._done += len(batch)
                self._changed.notify_all()
            idle_since = time.monotonic()

    def _write(self, batch: Sequence[UsageRecord]) -> None:
        try:
            self.ledger.record_many(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._lost(batch, exc)
                return
        for record in batch:  # one by one: a bad record loses only itself
            try:
                self.ledger.record(record)
            except Exception as exc:
                self._lost([record], exc)

    @staticmethod
    def _lost(records: Sequence[UsageRecord], exc: Exception) -> None:
        """The answers exist; the ledger misses them: say which."""
        ids = ", ".join(r.request_id for r in records)
        log.warning("usage record(s) not recorded (requests %s): %s", ids, exc)

    def _flush_own(self, timeout: float | None) -> bool:
        with self._changed:
            target = self._accepted  # what was queued before this call, not what comes later
            if self._done >= target:
                return True
            if self._writer is not None and self._writer.is_alive():
                self._waiting += 1
                self._changed.notify_all()  # the writer writes now instead of lingering
                try:
                    return self._changed.wait_for(lambda: self._done >= target, timeout)
                finally:
                    self._waiting -= 1
            self._writer = None
            batch, self._queued = self._queued, []  # no writer thread (interpreter exit): write here
        if batch:
            self._write(batch)
            with self._changed:
                self._done += len(batch)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far on this ledger, by any client of this process,
        is written; ``False`` if ``timeout`` passed first."""
        done = True
        for ledger in [w for w in _live() if w._identity == self._identity]:
            done = ledger._flush_own(timeout) and done
        return done

    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        self.flush()
        return self.ledger.totals(since, by)

    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        self.flush()
        return self.ledger.spent(since, session_id)

    def recent(self, limit: int = 50) -> list[UsageRecord]:
        self.flush()
        return self.ledger.recent(limit)

    def identity(self) -> str:
        return self._identity

    def repair(self) -> str:
        """Write what is queued (what fails is logged), then repair the ledger."""
        self.flush()
        return self.ledger.repair()

    def close(self) -> None:
        """Write what is queued, then close the ledger (a record after this is written at once)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        self._flush_own(None)
        with self._changed:
            self.ledger.close()

    def __repr__(self) -> str:
        return f"<WriteBehindLedger {self._identity} queued={len(self._queued)}>"


def write_behind(ledger: UsageLedger) -> UsageLedger:
    """``ledger`` with non-blocking writes (itself if its writes never block)."""
    return ledger if not ledger.blocking else WriteBehindLedger(ledger)


def _forget_in_child() -> None:
    """In a forked child: the parent's writer threads do not exist here, and the parent
    writes the records it queued; each ledger starts afresh."""
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    for ledger in list(_LIVE):
        ledger._fresh_state(ledger._closed)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _write_all_on_exit() -> None:
    for ledger in _live():
        if not ledger._flush_own(EXIT_WAIT):
            log.warning("usage records still queued at exit were not written: %r", ledger)
