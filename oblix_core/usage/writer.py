"""Usage records written behind the request path: :meth:`record` returns at once.

Every client's ledger is wrapped in a :class:`WriteBehindLedger`. An answered request
queues its record; one background thread per ledger writes what is queued, in batches
(:meth:`~oblix_core.usage.ledger.UsageLedger.record_many`: one SQLite transaction...), so no
request waits for the ledger's I/O and a burst of requests costs a few writes. A record does
not wake the thread: it wakes every :data:`LINGER` seconds and writes what gathered meanwhile
(sequential requests would otherwise wake it, and make it compete for the GIL, once each),
or at once when a read, ``close()`` or the exit waits for it. A batch
that fails is written again record by record, so one bad record loses only itself.

When the ledger itself fails a write (a full disk, Redis refusing writes when out of memory,
an S3 bucket that takes no more), the records it refused are kept in memory and written
again every :data:`RETRY_SECONDS`, one :data:`BATCH` of the oldest per try (a pass record by
record stops after :data:`PROBE` refusals in a row if a record from the batch's other end is
refused too: a long outage costs a few writes per try);
meanwhile reads in this process count them, also while they are written again (``spent``, so
budgets hold; ``totals``; ``recent``), each once: no try starts while a read counts. The
refusals are logged when they start, at most once per :data:`WARN_SECONDS` after, and when all
are written. A record is lost (logged with its request id) only when it is itself at fault:
it is invalid (:class:`~oblix_core.usage.ledger.InvalidUsageRecordError`) or it failed in
:data:`FAULT_TRIES` passes where a record written after it succeeded; or when it is still
unwritten at ``close()`` or at the exit, or more than :data:`MAX_UNWRITTEN` wait.

Reads (``totals``, ``spent``, ``recent``: reports and budgets) first wait until every
record queued before them is written — by any client of this process on the same
ledger (:meth:`~oblix_core.usage.ledger.UsageLedger.identity`) — so a process always reads its
own answers. Another process sees a record once it is written, normally within
:data:`LINGER` seconds. ``close()`` and the interpreter's normal exit write what is left; a
process killed outright (``SIGKILL``, power loss) can lose the records of its last
instants, unless its caller waited for them (``ResponseStream.recorded()``, which ``oblix
server`` awaits before an answer's end goes out; while the ledger refuses, a record kept in
memory ends that wait too, and a kill loses it). A forked child starts with an empty queue
of its own.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date

from oblix_core.usage.ledger import (
    InvalidUsageRecordError,
    UsageLedger,
    UsageRecord,
    UsageTotals,
    group_key,
)

log = logging.getLogger(__name__)

#: Seconds an idle writer thread waits for records before it ends (a new one starts on demand).
IDLE_SECONDS = 2.0
#: Seconds a queued record waits for others to be written with it (unless a read waits for it).
LINGER = 0.005
#: At most this many records per write.
BATCH = 500
#: How long a normal interpreter exit waits for a ledger's queue to be written (seconds).
EXIT_WAIT = 10.0
#: Seconds between tries to write the records a failing ledger refused.
RETRY_SECONDS = 2.0
#: At most this many refused records are kept for another try (then the oldest are lost, logged).
MAX_UNWRITTEN = 100_000
#: A pass writing records one by one stops after this many refusals in a row (the rest: kept).
PROBE = 3
#: A record is lost as at fault once it failed in this many passes where a later record was written.
FAULT_TRIES = 3
#: While the ledger refuses, at most one warning per this many seconds.
WARN_SECONDS = 60.0
#: A warning about records dropped over MAX_UNWRITTEN names at most this many (then a count).
DROPPED_NAMED = 1000

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
        #: Records the ledger refused (it failed, not they): counted by reads, written again later.
        self._unwritten: list[UsageRecord] = []
        self._retrying: list[UsageRecord] = []  # taken from _unwritten, being written again: counted
        self._reading = 0  # reads between counting _unwritten and reading the ledger: no retry starts
        self._strikes: dict[int, int] = {}  # id(record): passes it failed while a later one was written
        self._retry_at = 0.0
        self._warned_at: float | None = None  # when the ledger's refusals were last logged
        self._dropped: list[str] = []  # request ids dropped over MAX_UNWRITTEN, not logged yet
        self._dropped_count = 0
        self._dropped_at: float | None = None  # when drops were last logged
        self._last_error: object = None  # why the ledger last refused a record

    def record(self, record: UsageRecord) -> None:
        """Queue ``record``; the writer thread writes it shortly (see the module docstring)."""
        with self._changed:
            if self._closed:  # after close(): written here, never beside close()
                refused = self._write([record])
                if refused:
                    self._lost(refused, self._last_error)
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
                self._changed.wait_for(self._urgent, self._wait())  # records gather meanwhile
                due = bool(self._unwritten) and not self._reading and time.monotonic() >= self._retry_at
                if not self._queued and not due:
                    if self._closed or (
                        not self._unwritten and time.monotonic() - idle_since >= IDLE_SECONDS
                    ):
                        self._writer = None  # idle for a while, or closed with nothing left
                        self._changed.notify_all()
                        return
                    continue
                fresh, self._queued = self._queued[:BATCH], self._queued[BATCH:]
                if due:  # one batch of the oldest; reads still count them (_retrying)
                    self._retrying, self._unwritten = self._unwritten[:BATCH], self._unwritten[BATCH:]
                again = self._retrying
            refused = self._write([*again, *fresh])  # the oldest first
            with self._changed:
                self._done += len(fresh)
                self._keep(refused, again, fresh)
                self._changed.notify_all()
            idle_since = time.monotonic()

    def _wait(self) -> float:
        """How long the writer waits for records to gather: :data:`LINGER`, or until the next try
        of refused records when nothing is queued (a record does not wake it: it waits as long)."""
        if self._queued or not self._unwritten:
            return LINGER
        return max(LINGER, self._retry_at - time.monotonic())

    def _write(self, batch: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Write ``batch``; the records the ledger refused, to be written again later. A record
        that fails alone while a later one is written, or is invalid, is lost (logged)."""
        if not batch:
            return []
        try:
            self.ledger.record_many(batch)
            return []
        except Exception as exc:
            errors: list[Exception | None] = [exc] if len(batch) == 1 else self._one_by_one(batch)
        written_after = max((i for i, e in enumerate(errors) if e is None), default=-1)
        refused = []
        for i, (record, error) in enumerate(zip(batch, errors, strict=True)):
            if error is None:
                self._strikes.pop(id(record), None)
            elif isinstance(error, InvalidUsageRecordError) or (i < written_after and self._strike(record)):
                self._strikes.pop(id(record), None)
                self._lost([record], error)  # the record itself is at fault
            else:
                refused.append(record)
                self._last_error = error
        return refused

    def _one_by_one(self, batch: Sequence[UsageRecord]) -> list[Exception | None]:
        """Each record's error alone (``None``: written). After :data:`PROBE` refusals in a row
        a record from the batch's other end is tried: refused too, the ledger refuses everything
        (the rest are not tried; their error: that one); written, the pass goes on (the refused
        ones were at fault, e.g. one session's damaged counter)."""
        errors: list[Exception | None] = []
        tail = 0  # records written from the batch's end by the probes
        refusals = 0
        while len(errors) + tail < len(batch):
            if refusals >= PROBE and len(errors) + tail < len(batch) - 1:
                probe = self._try(batch[len(batch) - 1 - tail])
                if probe is not None:
                    return [*errors, *[probe] * (len(batch) - len(errors) - tail), *[None] * tail]
                tail, refusals = tail + 1, 0
                continue
            error = self._try(batch[len(errors)])
            errors.append(error)
            refused = error is not None and not isinstance(error, InvalidUsageRecordError)
            refusals = refusals + 1 if refused else 0
        return [*errors, *[None] * tail]

    def _try(self, record: UsageRecord) -> Exception | None:
        try:
            self.ledger.record(record)
        except Exception as exc:
            return exc
        return None

    def _strike(self, record: UsageRecord) -> bool:
        """``record`` failed while a later one was written: at fault after :data:`FAULT_TRIES`
        such passes (once could be the ledger getting room in the middle of the pass)."""
        strikes = self._strikes.get(id(record), 0) + 1
        if strikes < FAULT_TRIES:
            self._strikes[id(record)] = strikes
            return False
        self._strikes.pop(id(record), None)
        return True

    def _keep(
        self, refused: list[UsageRecord], again: Sequence[UsageRecord], fresh: Sequence[UsageRecord]
    ) -> None:
        """Under the lock, after writing ``again`` (refused before) and ``fresh``: keep the
        ``refused`` ones for another try, the oldest first, and say so (not once per answer)."""
        self._retrying = []
        ids = {id(r) for r in refused}
        back = [r for r in again if id(r) in ids]
        self._unwritten = [*back, *self._unwritten, *(r for r in fresh if id(r) in ids)]
        if refused:
            self._retry_at = time.monotonic() + RETRY_SECONDS
        elif again:
            self._retry_at = 0.0  # the ledger takes writes again: the next batch at once
        if len(self._unwritten) > MAX_UNWRITTEN:
            self._drop_oldest()
        self._report(refused, bool(again))

    def _drop_oldest(self) -> None:
        """More than :data:`MAX_UNWRITTEN` wait: the oldest are lost (under the lock). Said at
        once, then at most once per :data:`WARN_SECONDS` (not once per answer)."""
        dropped, self._unwritten = self._unwritten[:-MAX_UNWRITTEN], self._unwritten[-MAX_UNWRITTEN:]
        for record in dropped:
            self._strikes.pop(id(record), None)
        self._dropped += [r.request_id for r in dropped][: DROPPED_NAMED - len(self._dropped)]
        self._dropped_count += len(dropped)
        now = time.monotonic()
        if self._dropped_at is None or now - self._dropped_at >= WARN_SECONDS:
            self._dropped_at = now
            self._say_dropped()

    def _say_dropped(self) -> None:
        if not self._dropped_count:
            return
        more = self._dropped_count - len(self._dropped)
        names = ", ".join(self._dropped) + (f" and {more} more" if more else "")
        self._lost_named(names, f"{self._last_error}; more than {MAX_UNWRITTEN} waited, the oldest dropped")
        self._dropped, self._dropped_count = [], 0

    def _report(self, refused: list[UsageRecord], retried: bool) -> None:
        """One warning when the ledger starts refusing, then at most one per :data:`WARN_SECONDS`;
        one line when every kept record is written."""
        now = time.monotonic()
        if refused and (self._warned_at is None or now - self._warned_at >= WARN_SECONDS):
            self._warned_at = now
            ids = ", ".join(r.request_id for r in refused[:20]) + (" ..." if len(refused) > 20 else "")
            log.warning(
                "usage record(s) not recorded yet (requests %s): %s; %d kept in memory, counted by "
                "this process's budgets and reports, written again every %g s (said again at most "
                "every %g s while the ledger refuses)",
                ids,
                self._last_error,
                len(self._unwritten),
                RETRY_SECONDS,
                WARN_SECONDS,
            )
        elif retried and not self._unwritten and self._warned_at is not None:
            self._warned_at = None
            log.warning("usage ledger takes writes again: every usage record kept in memory is written")

    @staticmethod
    def _lost(records: Sequence[UsageRecord], exc: object) -> None:
        """The answers exist; the ledger misses them: say which."""
        WriteBehindLedger._lost_named(", ".join(r.request_id for r in records), exc)

    @staticmethod
    def _lost_named(ids: str, exc: object) -> None:
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
            refused = self._write(batch)
            with self._changed:
                self._done += len(batch)
                self._keep(refused, (), batch)
        return True

    def _last_try(self, timeout: float | None = None) -> None:
        """At close or exit: the refused records written once more, a batch at a time until the
        ledger refuses a whole batch; those still unwritten are lost (logged)."""
        with self._changed:
            self._retry_at = math.inf  # the writer starts no other try (at exit it still runs)
            self._changed.wait_for(self._not_retrying, timeout)  # its try under way ends first
            again, self._unwritten, self._retrying = [*self._retrying, *self._unwritten], [], []
        lost: list[UsageRecord] = []
        while again:
            batch, again = again[:BATCH], again[BATCH:]
            refused = self._write(batch)
            lost += refused
            if len(refused) == len(batch):  # the ledger takes nothing: the rest are not tried
                lost += again
                break
        self._strikes.clear()
        with self._changed:
            self._say_dropped()  # those dropped since the last warning
        if lost:
            self._lost(lost, f"{self._last_error} (still refused when the ledger was closed)")

    def _not_retrying(self) -> bool:
        return not self._retrying

    @contextmanager
    def _unwritten_since(self, since: date | None) -> Iterator[list[UsageRecord]]:
        """The records refused so far by this ledger (in every client of this process), of the
        UTC day ``since`` or later; no retry starts (nor is under way) until the block ends, so
        the ledger, read in the block, holds none of them (each counted once). A request id kept
        twice (a replay offers its answer's record again) counts once, as the ledger keeps it."""
        day = (since or date.min).isoformat()
        records: dict[str, UsageRecord] = {}
        ledgers = [w for w in _live() if w._identity == self._identity]
        held = []
        try:
            for ledger in ledgers:
                with ledger._changed:
                    ledger._changed.wait_for(ledger._not_retrying)
                    ledger._reading += 1
                    held.append(ledger)
                    for record in ledger._unwritten:
                        records.setdefault(record.request_id, record)  # the first, as the ledger keeps
            yield [r for r in records.values() if r.day >= day]
        finally:
            for ledger in held:
                with ledger._changed:
                    ledger._reading -= 1
                    ledger._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far on this ledger, by any client of this process,
        is written; ``False`` if ``timeout`` passed first."""
        done = True
        for ledger in [w for w in _live() if w._identity == self._identity]:
            done = ledger._flush_own(timeout) and done
        return done

    # Reads count the records the ledger refused, with the ledger's: each once (_unwritten_since).

    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        self.flush()
        with self._unwritten_since(since) as refused:
            rows = self.ledger.totals(since, by)
        if not refused:
            return rows
        groups = {row.key: row for row in rows}
        for record in refused:
            key = group_key(record, by)
            groups.setdefault(key, UsageTotals(key)).add(record)
        return sorted(groups.values(), key=lambda t: t.key)

    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        self.flush()
        with self._unwritten_since(since) as refused:
            spent = self.ledger.spent(since, session_id)
        return spent + sum(r.cost_usd for r in refused if session_id is None or r.session_id == session_id)

    def recent(self, limit: int = 50) -> list[UsageRecord]:
        self.flush()
        with self._unwritten_since(None) as refused:
            records = self.ledger.recent(limit)
        if not refused:
            return records
        return sorted([*records, *refused], key=lambda r: r.timestamp, reverse=True)[:limit]

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
        self._last_try()
        with self._changed:
            self.ledger.close()

    def __repr__(self) -> str:
        waiting = len(self._unwritten) + len(self._retrying)
        refused = f" refused={waiting}" if waiting else ""
        return f"<WriteBehindLedger {self._identity} queued={len(self._queued)}{refused}>"


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
        ledger._last_try(EXIT_WAIT)
