"""Usage records written behind the request path: :meth:`record` returns at once.

Every client's ledger is wrapped in a :class:`WriteBehindLedger`. An answered request
queues its record; one background thread per ledger writes what is queued, in batches
(:meth:`~oblix_core.usage.UsageLedger.record_many`: one SQLite transaction, one Redis
pipeline...), so no request waits for the ledger's I/O and a burst of requests costs a
few writes. Reads (``totals``, ``spent``, ``recent``: reports and budgets) first wait
until everything queued before them is written, so this process always reads its own
records. Another process sees a record once it is written, normally within a
millisecond. ``close()`` and the interpreter's normal exit write what is left; a
process killed outright (``SIGKILL``, power loss) can lose the records of its last
instants.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Sequence
from datetime import date

from oblix_core.usage import UsageLedger, UsageRecord, UsageTotals

log = logging.getLogger(__name__)

#: Seconds an idle writer thread waits for records before it ends (a new one starts on demand).
IDLE_SECONDS = 2.0
#: At most this many records per write.
BATCH = 500
#: How long a normal interpreter exit waits for a ledger's queue to be written (seconds).
EXIT_WAIT = 10.0

_LIVE: weakref.WeakSet[WriteBehindLedger] = weakref.WeakSet()


class WriteBehindLedger(UsageLedger):
    """``ledger`` with non-blocking :meth:`record` (see the module docstring)."""

    blocking = False

    def __init__(self, ledger: UsageLedger) -> None:
        self.ledger = ledger
        self.name = ledger.name
        self._queued: list[UsageRecord] = []
        self._writing = 0  # records taken by the writer and not yet written
        self._changed = threading.Condition()
        self._writer: threading.Thread | None = None
        _LIVE.add(self)

    def record(self, record: UsageRecord) -> None:
        """Queue ``record``; the writer thread writes it shortly (see the module docstring)."""
        with self._changed:
            self._queued.append(record)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="oblix-usage", daemon=True)
                self._writer.start()
            elif len(self._queued) == 1:
                self._changed.notify_all()

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            self.record(record)

    def _write_queued(self) -> None:
        while True:
            with self._changed:
                if not self._queued and not self._changed.wait_for(lambda: self._queued, IDLE_SECONDS):
                    self._writer = None
                    return
                batch, self._queued = self._queued[:BATCH], self._queued[BATCH:]
                self._writing = len(batch)
            self._write(batch)
            with self._changed:
                self._writing = 0
                self._changed.notify_all()

    def _write(self, batch: Sequence[UsageRecord]) -> None:
        try:
            self.ledger.record_many(batch)
        except Exception as exc:  # the answers exist; the ledger misses them: say which
            ids = ", ".join(r.request_id for r in batch[:5]) + (" ..." if len(batch) > 5 else "")
            log.warning("%d usage record(s) were not recorded (requests %s): %s", len(batch), ids, exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is written; ``False`` if ``timeout`` passed first."""
        with self._changed:
            if self._writer is not None and self._writer.is_alive():
                return self._changed.wait_for(lambda: not self._queued and not self._writing, timeout)
            self._writer = None
            batch, self._queued = self._queued, []  # no writer thread: write here
        if batch:
            self._write(batch)
        return True

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
        return self.ledger.identity()

    def close(self) -> None:
        """Write what is queued, then close the ledger."""
        self.flush()
        self.ledger.close()

    def __repr__(self) -> str:
        return f"<WriteBehindLedger {self.ledger.identity()} queued={len(self._queued)}>"


def write_behind(ledger: UsageLedger) -> UsageLedger:
    """``ledger`` with non-blocking writes (itself if its writes never block)."""
    return ledger if not ledger.blocking else WriteBehindLedger(ledger)


@atexit.register
def _write_all_on_exit() -> None:
    for ledger in list(_LIVE):
        if not ledger.flush(EXIT_WAIT):
            log.warning("usage records still queued at exit were not written: %r", ledger)
