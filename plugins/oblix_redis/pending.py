"""Listing-index updates that failed after their session write committed (Redis Cluster).

On a cluster the index lives on another master than the session, so its update is a
second script. When that one fails (its master is failing over), the write itself has
committed and is acknowledged; the index update is queued here and replayed, in order,
before the next index update or listing of this store object (the file store's
"pending row" idea). Replaying is safe: touches only raise a score (``ZADD GT``), syncs
are versioned, drops compare the score they saw. A process that dies with updates queued
leaves the index behind until ``repair_index(rescan=True)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: (script name, arguments) of one index update.
Update = tuple[str, Sequence[str]]

_LIMIT = 100_000  # queued updates kept; beyond it the oldest are dropped (repair_index repairs)
_PAUSE = 0.5  # seconds without a new attempt after a replay failed (writes do not pay for it)


class PendingIndex:
    """An ordered, thread-safe queue of index updates to replay."""

    def __init__(self, describe: Callable[[Exception], str]) -> None:
        self._describe = describe  # an error as text, without secrets
        self._updates: list[Update] = []
        self._lock = threading.Lock()
        self._resume_at = 0.0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._updates)

    def add(self, update: Update) -> None:
        with self._lock:
            self._updates.append(update)
            if len(self._updates) > _LIMIT:
                del self._updates[0]
                self.dropped += 1

    def apply(self, update: Update, run: Callable[[Update], object]) -> bool:
        """Run ``update`` after the queued ones; queue it instead if that fails. True if applied."""
        if not self._updates:
            try:
                run(update)
                return True
            except Exception as exc:
                self._failed(exc)
                self.add(update)
                return False
        self.add(update)
        return self.replay(run, force=False)

    def replay(self, run: Callable[[Update], object], force: bool = True) -> bool:
        """Replay the queue in order, stopping at the first failure. True if it is empty.

        Without ``force`` nothing is tried for a short pause after a failure, so writes made
        while the index's master fails over do not each wait for it.
        """
        with self._lock:
            if not force and time.monotonic() < self._resume_at:
                return not self._updates
            while self._updates:
                try:
                    run(self._updates[0])
                except Exception as exc:
                    self._failed(exc)
                    if force:
                        raise
                    return False
                del self._updates[0]
        return True

    def _failed(self, exc: Exception) -> None:
        self._resume_at = time.monotonic() + _PAUSE
        log.warning(
            "redis store: a listing-index update failed (%s); the write it follows is stored, "
            "and the update is queued (%d waiting) for replay",
            self._describe(exc),
            len(self._updates) + 1,
        )
