"""The budget gate: one budgeted cloud request at a time per process and ledger.

Before a cloud model starts on a request a budget covers, the request takes the gate of its
ledger (:meth:`BudgetGate.acquire`) and reads the ledger again; it holds the gate until its
usage is recorded, so the next one reads what it spent. Two bounds keep one request from
holding everyone else:

* a request that waits for the gate longer than ``wait`` seconds fails with
  :class:`BudgetGateBusyError` (nothing was sent);
* a holder whose *reader* stalls — it handed text to the caller and has waited for the
  caller to ask for more for ``stall`` seconds in all (one long stall or many short ones: a
  reader that takes a chunk now and then cannot keep it either) — loses the gate to the
  next waiter. Its answer goes on and is recorded when it ends (or is abandoned), so a
  budget can be overspent by at most one in-flight request per process plus the requests
  whose readers stalled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import anyio

from oblix_core.errors import NoModelAvailableError

log = logging.getLogger(__name__)

#: How often a request waiting for the gate looks again (seconds).
POLL = 0.01

_GATES: dict[str, BudgetGate] = {}
_GATES_LOCK = threading.Lock()


class BudgetGateBusyError(NoModelAvailableError):
    """A budgeted cloud request waited longer than ``[budgets] gate_wait`` for the budget gate."""


class BudgetGate:
    """The gate of one ledger in this process (see the module docstring)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._holder: object | None = None
        self._reader_since: float | None = None  # when the holder's reader was last handed text
        self._reader_waited = 0.0  # seconds the holder waited for its reader before that

    def _waited(self) -> float:
        """Seconds the holder has waited for its reader in all (the current wait included)."""
        since = self._reader_since
        return self._reader_waited + (self._clock() - since if since is not None else 0.0)

    def _free_for(self, stall: float) -> bool:
        if self._holder is None:
            return True
        waited = self._waited()
        if waited >= stall:
            log.warning(
                "budget gate of %s: the request holding it has waited %.1fs for its reader; the next "
                "request goes ahead ([budgets] gate_stall=%gs)",
                self.name,
                waited,
                stall,
            )
            return True
        return False

    def try_acquire(self, owner: object, stall: float) -> bool:
        """Take the gate for ``owner`` if it is free (or its holder's reader stalled)."""
        with self._lock:
            if not self._free_for(stall):
                return False
            self._holder, self._reader_since, self._reader_waited = owner, None, 0.0
            return True

    async def acquire(self, owner: object, wait: float, stall: float) -> None:
        """Take the gate for ``owner``; raise :class:`BudgetGateBusyError` after ``wait`` seconds."""
        deadline = self._clock() + wait
        while not self.try_acquire(owner, stall):
            if self._clock() >= deadline:
                raise BudgetGateBusyError(
                    f"Waited {wait:g}s for the budget gate of {self.name}: another budgeted cloud request "
                    "of this process held it all that time. Nothing was sent; try again, or raise "
                    "[budgets] gate_wait."
                )
            await anyio.sleep(POLL)

    def reader(self, owner: object, waiting: bool) -> None:
        """``owner`` handed text to its reader (``waiting``) or the reader asked for more."""
        with self._lock:
            if self._holder is not owner:
                return
            if waiting:
                self._reader_since = self._clock()
            elif self._reader_since is not None:
                self._reader_waited += self._clock() - self._reader_since
                self._reader_since = None

    def release(self, owner: object) -> None:
        """Give the gate back (nothing if ``owner`` no longer holds it)."""
        with self._lock:
            if self._holder is owner:
                self._holder, self._reader_since, self._reader_waited = None, None, 0.0

    def held_by(self, owner: object) -> bool:
        with self._lock:
            return self._holder is owner


def gate_for(identity: str) -> BudgetGate:
    """This process's gate for the ledger named ``identity``."""
    with _GATES_LOCK:
        gate = _GATES.get(identity)
        if gate is None:
            gate = _GATES[identity] = BudgetGate(identity)
        return gate
