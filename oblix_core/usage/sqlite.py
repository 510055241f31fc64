"""A usage ledger in one SQLite file: the file store's ``<root>/.usage.sqlite3``, and the
fallback ``$OBLIX_HOME/usage.sqlite3`` for stores without a ledger of their own.

One row per answered request (the request id is the key, so a repeated record counts
once), indexed by day and by session: totals over months are one indexed ``GROUP BY``.
WAL mode; several processes on one machine write it at once (SQLite's own locking).
Unlike the session index this file is not a cache: it is the only copy of the ledger.

Writes are all-or-nothing: a batch is one ``BEGIN IMMEDIATE`` transaction, rolled back
whole if any row fails. A damaged file raises :class:`LedgerDamagedError` naming it;
:meth:`SqliteUsageLedger.repair` (``oblix usage --repair``) moves it aside and starts a fresh
ledger with every row that could still be read from it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oblix_core.usage.ledger import LedgerDamagedError, UsageLedger, UsageRecord, UsageTotals
from oblix_core.usage.writer import write_behind

if TYPE_CHECKING:
    from oblix_core.sessions.store import SessionStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    session_id TEXT,
    model_id TEXT NOT NULL,
    local INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    cost_usd REAL NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    tokens_estimated INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS usage_day ON usage (day);
CREATE INDEX IF NOT EXISTS usage_session ON usage (session_id, day);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""

_COLUMNS = (
    "request_id, ts, session_id, model_id, local, input_tokens, output_tokens, cached_tokens, "
    "latency_ms, cost_usd, rule, reason, tokens_estimated, error"
)
_SUMS = (
    "COUNT(*), COALESCE(SUM(local), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
    "COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(latency_ms), 0)"
)
_INSERT = (
    "INSERT OR IGNORE INTO usage (request_id, ts, day, session_id, model_id, local, input_tokens, "
    "output_tokens, cached_tokens, latency_ms, cost_usd, rule, reason, tokens_estimated, error) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Words of SQLite's messages for a file that is not (or no longer) a sound database.
_DAMAGE = (
    "not a database",
    "malformed",
    "corrupt",
    "disk image",
    # a usage table of another shape (another program's file, a hand edit)
    "no such column",
    "has no column named",
    "no such table",
)
_GROUP = {"model": "model_id", "day": "day", "session": "COALESCE(session_id, '(no session)')"}


def _row(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.request_id,
        record.timestamp,
        record.day,
        record.session_id,
        record.model_id,
        int(record.local),
        record.input_tokens,
        record.output_tokens,
        record.cached_tokens,
        record.latency_ms,
        record.cost_usd,
        record.rule,
        record.reason,
        int(record.tokens_estimated),
        record.error,
    )


def _record(r: Sequence[Any]) -> UsageRecord:
    """A record from a row of ``_COLUMNS``."""
    return UsageRecord(
        request_id=r[0],
        timestamp=r[1],
        session_id=r[2],
        model_id=r[3],
        local=bool(r[4]),
        input_tokens=r[5],
        output_tokens=r[6],
        cached_tokens=r[7],
        latency_ms=r[8],
        cost_usd=r[9],
        rule=r[10],
        reason=r[11],
        tokens_estimated=bool(r[12]),
        error=r[13],
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a ledger written by an older Oblix lacks."""
    names = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
    if "error" not in names:
        with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
            db.execute("ALTER TABLE usage ADD COLUMN error TEXT NOT NULL DEFAULT ''")


def _private(path: Path) -> None:
    """Create ``path`` 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
    database's mode), and tighten it and those files where an older Oblix left them readable."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(OSError):  # missing, or another user's
            found = os.lstat(name)
            if stat.S_ISREG(found.st_mode) and stat.S_IMODE(found.st_mode) & 0o077:
                os.chmod(name, 0o600)


class SqliteUsageLedger(UsageLedger):
    """The ledger in the SQLite file ``path`` (see the module docstring)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                if not self._ready:
                    db.executescript(_SCHEMA)
                    _migrate(db)
                    self._ready = True
                self._all.append(db)
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = getattr(self._local, "db", None)
            if db is None:
                db = self._local.db = self._connect()
            yield db
        except sqlite3.DatabaseError as exc:
            if any(word in str(exc).lower() for word in _DAMAGE):
                self._reopen_next_time()  # `oblix usage --repair` may replace the file meanwhile
                raise LedgerDamagedError(self.path, str(exc)) from None
            raise
        except (IsADirectoryError, NotADirectoryError) as exc:  # the path is no file
            raise LedgerDamagedError(self.path, f"{exc.strerror or exc}: it is not a ledger file") from None

    def _reopen_next_time(self) -> None:
        """Close this thread's connection to a damaged file: its next use opens the path again,
        the fresh ledger once the file was repaired (moved aside) by any process."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        with self._lock:
            self._ready = False  # a file moved away by hand: the next connection makes the table
            if db in self._all:
                self._all.remove(db)
        if db is not None:
            db.close()

    def record(self, record: UsageRecord) -> None:
        self.record_many((record,))

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        rows = [_row(record) for record in records]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        group = _GROUP.get(by or "", "'total'")
        sql = f"SELECT {group}, {_SUMS} FROM usage WHERE day >= ? GROUP BY 1 ORDER BY 1"
        if by is None:
            sql = f"SELECT 'total', {_SUMS} FROM usage WHERE day >= ?"
        with self._db() as db:
            rows = db.execute(sql, (since.isoformat(),)).fetchall()
        return [UsageTotals(str(r[0]), *r[1:]) for r in rows]

    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        sql, args = (
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE day >= ?",
            [(since or date.min).isoformat()],
        )
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        with self._db() as db:
            return float(db.execute(sql, args).fetchone()[0])

    def recent(self, limit: int = 50) -> list[UsageRecord]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM usage ORDER BY ts DESC LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def repair(self) -> str:
        """Move the ledger file aside (``<name>.damaged-<UTC time>``) and start a fresh one with
        every record that can still be read from it; say what was done."""
        self.close()
        if not self.path.exists():
            return f"{self.path}: no ledger file; nothing to repair."
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        with self._lock:
            self._ready = False
        saved = _readable(aside)
        if saved:
            self.record_many(saved)
        return (
            f"Moved the damaged usage ledger to {aside} and started a fresh {self.path} with the "
            f"{len(saved)} record(s) that could still be read."
        )

    def identity(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for db in connections:
            db.close()
        self._local = threading.local()


def _readable(path: Path) -> list[UsageRecord]:
    """The records that can still be read from a damaged ledger file (none if it is no database)."""
    found: list[UsageRecord] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return found
    try:
        names = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
        columns = _COLUMNS if "error" in names else _COLUMNS.replace(", error", ", ''")
        for row in db.execute(f"SELECT {columns} FROM usage"):
            with contextlib.suppress(TypeError, ValueError):
                found.append(_record(row))
    except sqlite3.Error:
        pass  # what was read before the damage is kept
    finally:
        db.close()
    return found


def ledger_for(store: SessionStore, home: Path) -> UsageLedger:
    """The store's own ledger, else the SQLite ledger ``<home>/usage.sqlite3``; written behind
    the request path (:mod:`oblix_core.usage.writer`)."""
    own = store.usage_ledger()
    return write_behind(own if own is not None else SqliteUsageLedger(Path(home) / "usage.sqlite3"))
