"""The file store's listing index: a SQLite cache of session summaries.

Each row records the ``messages.jsonl`` size and the ``meta.json`` stamp it was built
from, so a reader can tell a stale row (left by a crash or a failed index update) from
a current one with one ``stat`` per file and repair it (see ``oblix_file.store``).
Connections are per thread, kept in a registry so that :meth:`SessionIndex.close`
closes every one of them, whichever thread opened it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from oblix.plugin import matches_metadata, parse_timestamp

INDEX = ".index.sqlite3"
#: The index's name before version 2; ids may take that name, so an old file is removed.
LEGACY_INDEX = "index.sqlite3"
VERSION = 2
#: ``meta_stamp`` of a row whose metadata is being changed (or whose writer died doing so).
PENDING = "pending"
_COLUMNS = "id, title, created_at, updated_at, updated_ts, message_count, metadata, log_size, meta_stamp"
_SCHEMA = f"""
DROP TABLE IF EXISTS sessions;
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    title TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_ts REAL NOT NULL,
    message_count INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    log_size INTEGER NOT NULL,
    meta_stamp TEXT NOT NULL
);
CREATE INDEX sessions_by_update ON sessions (updated_ts DESC);
PRAGMA user_version = {VERSION};
"""


def _ts(timestamp: str) -> float:
    return parse_timestamp(timestamp).timestamp()


@attrs.frozen
class Summary:
    """One session's listing row, and the file versions it was derived from."""

    id: str
    title: str | None
    created_at: str
    updated_at: str
    message_count: int
    metadata: dict[str, Any]
    log_size: int
    meta_stamp: str

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.title,
            self.created_at,
            self.updated_at,
            _ts(self.updated_at),
            self.message_count,
            json.dumps(self.metadata, ensure_ascii=False),
            self.log_size,
            self.meta_stamp,
        )

    def public(self) -> dict[str, Any]:
        """The summary as ``list_sessions`` returns it."""
        return {
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.message_count,
            "metadata": self.metadata,
        }


class SessionIndex:
    """The SQLite file ``<root>/.index.sqlite3``, or a private in-memory copy.

    ``mode`` is ``"rw"`` normally, ``"ro"`` when the root cannot be written but the
    index file can be read, and ``"memory"`` when neither works (a read-only root with
    no usable index): then the index is a copy scanned from the session files.
    """

    def __init__(self, root: Path, scan: Callable[[], Iterable[Summary]]) -> None:
        """``scan`` yields the summaries read from the session files (for an in-memory copy)."""
        self.path = root / INDEX
        self._scan = scan
        self.mode = "rw"
        self._memory_uri = f"file:oblix-index-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._lock = threading.RLock()
        self._local = threading.local()
        self._generation = 0
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._keeper: sqlite3.Connection | None = None  # keeps the in-memory copy alive

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.mode == "rw":
            # Created private (0600); SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                db.close()
                raise
            return db
        uri = f"file:{quote(str(self.path))}?mode=ro" if self.mode == "ro" else self._memory_uri
        return sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (opened on first use, and again after :meth:`close`)."""
        cached = getattr(self._local, "db", None)
        if cached is None or cached[0] != self._generation:
            with self._lock:
                if self.mode == "memory" and self._keeper is None:
                    self._load_memory_copy()
                db = self._connect()
                self._forget_dead_threads()
                self._connections[threading.current_thread()] = db
                self._local.db = (self._generation, db)
        yield self._local.db[1]

    def _forget_dead_threads(self) -> None:
        for thread in [t for t in self._connections if not t.is_alive()]:
            self._connections.pop(thread).close()

    def open(self, writable: bool) -> bool:
        """Prepare the index; ``True`` if it must be rebuilt from the session files.

        A damaged or outdated index file is replaced. When the root is not ``writable``
        the index is read in place if it is current, else rebuilt in memory.
        Raises ``sqlite3.Error``/``OSError`` only when the root is writable.
        """
        if not writable:
            return self._open_read_only()
        try:
            return self._prepare()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # full, locked or unwritable: report it, do not delete anything
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._prepare()

    def _prepare(self) -> bool:
        with self.connection() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] == VERSION:
                db.execute("SELECT count(*) FROM sessions").fetchone()
                return False
            db.execute("BEGIN IMMEDIATE")  # two processes opening a new root: one creates it
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] == VERSION:
                    db.execute("ROLLBACK")
                    return False
                for statement in _SCHEMA.split(";"):
                    db.execute(statement)
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")
            return True

    def _open_read_only(self) -> bool:
        """Read the index file in place if it is current, else load a copy into memory."""
        self.mode = "ro"
        try:
            with self.connection() as db:
                if db.execute("PRAGMA user_version").fetchone()[0] == VERSION:
                    db.execute("SELECT count(*) FROM sessions").fetchone()
                    return False
        except sqlite3.Error:  # missing, or unreadable without write access (WAL)
            pass
        self.close()
        self.mode = "memory"
        with self._lock:
            self._load_memory_copy()
        return False

    def _load_memory_copy(self) -> None:
        self._keeper = sqlite3.connect(
            self._memory_uri, uri=True, isolation_level=None, check_same_thread=False
        )
        self._keeper.executescript(_SCHEMA)
        self.reset(self._scan())

    def close(self) -> None:
        """Close the connections of every thread (they reopen if the index is used again)."""
        with self._lock:
            for db in self._connections.values():
                db.close()
            self._connections.clear()
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None
            self._generation += 1

    # -- queries -------------------------------------------------------------------------

    def summaries(self, wanted: dict[str, Any] | None = None) -> Generator[Summary, None, None]:
        """Rows whose metadata matches ``wanted`` or is pending, most recently updated first.

        Read lazily: close the iterator before writing to the index.
        """
        with self.connection() as db:
            cursor = db.execute(f"SELECT {_COLUMNS} FROM sessions ORDER BY updated_ts DESC")
        try:
            for row in cursor:
                metadata = json.loads(row[6])
                if row[8] == PENDING or matches_metadata(metadata, wanted):
                    yield Summary(row[0], row[1], row[2], row[3], row[5], metadata, row[7], row[8])
        finally:
            cursor.close()

    def insert(self, summary: Summary, replace: bool = False) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        with self.connection() as db:
            db.execute(f"{verb} INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", summary.row())

    def reset(self, summaries: Iterable[Summary]) -> None:
        """Replace every row, in one transaction."""
        with self.connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM sessions")
                db.executemany(
                    f"INSERT OR REPLACE INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.row() for s in summaries),
                )
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")

    def record_append(self, sid: str, added: int, before: int, after: int, updated_at: str) -> bool:
        """Count an append that grew the log from ``before`` to ``after`` bytes.

        ``False`` (nothing changed) if the row did not describe the log as it was before
        the append: the caller must then re-summarise the session.
        """
        with self.connection() as db:
            cursor = db.execute(
                "UPDATE sessions SET message_count = message_count + ?, log_size = ?, "
                "updated_at = CASE WHEN updated_ts < ? THEN ? ELSE updated_at END, "
                "updated_ts = MAX(updated_ts, ?) WHERE id = ? AND log_size = ?",
                (added, after, _ts(updated_at), updated_at, _ts(updated_at), sid, before),
            )
            return cursor.rowcount == 1

    def mark_pending(self, sid: str) -> None:
        """Flag a row whose ``meta.json`` is about to change (listings re-derive it until
        :meth:`record_metadata` stores the change, or a listing holding the session's lock
        finds no writer left)."""
        with self.connection() as db:
            db.execute("UPDATE sessions SET meta_stamp = ? WHERE id = ?", (PENDING, sid))

    def record_metadata(self, sid: str, summary: Summary) -> bool:
        """Store new metadata in a row marked pending; ``False`` if it was not pending."""
        with self.connection() as db:
            cursor = db.execute(
                "UPDATE sessions SET title = ?, metadata = ?, meta_stamp = ?, "
                "updated_at = CASE WHEN updated_ts < ? THEN ? ELSE updated_at END, "
                "updated_ts = MAX(updated_ts, ?) WHERE id = ? AND meta_stamp = ?",
                (
                    summary.title,
                    json.dumps(summary.metadata, ensure_ascii=False),
                    summary.meta_stamp,
                    _ts(summary.updated_at),
                    summary.updated_at,
                    _ts(summary.updated_at),
                    sid,
                    PENDING,
                ),
            )
            return cursor.rowcount == 1

    def repair(self, stale: Summary, fresh: Summary) -> None:
        """Replace the row ``stale`` by ``fresh``, unless a writer changed it meanwhile."""
        with self.connection() as db:
            db.execute(
                f"UPDATE sessions SET ({_COLUMNS}) = (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "WHERE id = ? AND log_size = ? AND meta_stamp = ?",
                (*fresh.row(), stale.id, stale.log_size, stale.meta_stamp),
            )

    def remove(self, sid: str) -> None:
        with self.connection() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (sid,))


def _rollback(db: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):  # SQLite may have rolled back already (a full disk)
        db.execute("ROLLBACK")


def remove_legacy_index(root: Path) -> None:
    """Remove an index file of the old name (a cache; ids may now take that name)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = root / f"{LEGACY_INDEX}{suffix}"
        try:
            if path.is_file() and not path.is_symlink():
                os.unlink(path)
        except OSError:
            pass
