"""Sessions as files: one folder per session, an append-only message log, a SQLite index.

Layout under ``root``::

    <session id>/meta.json        title, timestamps, context, metadata (replaced atomically)
    <session id>/messages.jsonl   one JSON message per line, append-only, fsynced
    <session id>/.lock            inter-process lock for writers of this session
    index.sqlite3                 summaries for fast, sorted, filtered listing (rebuildable)

Guarantees: an append costs the same whatever the history length (no rewrite); a
writer killed at any instant leaves every acknowledged (returned) append readable, at
worst with a torn, unacknowledged last line that readers ignore and the next writer
cuts off; writers in several threads or processes are serialised per session by a file
lock, so no message is lost or interleaved. The session files are the truth: the index
is a cache that ``rebuild_index()`` regenerates (automatically when it is missing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import filelock

from oblix_core.errors import (
    OblixError,
    SessionCorruptedError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.records import (
    Message,
    SessionRecord,
    matches_metadata,
    parse_timestamp,
    utc_now,
    validate_session_id,
)
from oblix_core.stores import SessionStore

log = logging.getLogger(__name__)

META = "meta.json"
MESSAGES = "messages.jsonl"
LOCK = ".lock"
INDEX = "index.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    title TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_ts REAL NOT NULL,
    message_count INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_update ON sessions (updated_ts DESC);
"""


def _ts(timestamp: str) -> float:
    return parse_timestamp(timestamp).timestamp()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _encode(message: Message) -> bytes:
    return json.dumps(message.to_dict(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _tail(path: Path, lines: int) -> bytes:
    """The end of ``path`` holding at least its last ``lines`` complete lines (read backwards)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start, block, found = end, 65536, -1  # the final newline ends the last line
        while start > 0 and found <= lines:
            start = max(0, start - block)
            handle.seek(start)
            found = handle.read(end - start).count(b"\n")
        handle.seek(start)
        data = handle.read(end - start)
    if start > 0:  # drop the partial first line
        data = data[data.index(b"\n") + 1 :]
    return data


def _cut_torn_tail(fd: int) -> None:
    """Truncate an unterminated last line (left by a writer killed mid-append)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


class FileSessionStore(SessionStore):
    """File-backed session store rooted at ``root`` (see the module docstring)."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float = 30.0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.lock_timeout = lock_timeout
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OblixError(f"Cannot create the session folder {self.root}: {exc}.") from exc
        self._local = threading.local()
        self._sweep_leftovers()
        fresh = not (self.root / INDEX).exists()
        with self._db() as db:
            db.executescript(_SCHEMA)
        if fresh and any(self._session_dirs()):
            self.rebuild_index()

    def _sweep_leftovers(self, older_than: float = 3600.0) -> None:
        """Remove staging/trash folders left by writers that died over an hour ago."""
        cutoff = time.time() - older_than
        for entry in os.scandir(self.root):
            if entry.name.startswith((".new-", ".trash-")) and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)

    # -- paths and locks ----------------------------------------------------------------

    def _dir(self, session_id: str) -> Path:
        path = self.root / validate_session_id(session_id)
        if path.parent != self.root:  # belt and braces: ids never contain separators
            raise OblixError(f"Session id {session_id!r} resolves outside the store root.")
        return path

    @contextmanager
    def _locked(self, session_id: str) -> Iterator[Path]:
        path = self._dir(session_id)
        lock = filelock.FileLock(path / LOCK, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except FileNotFoundError:
            raise SessionNotFoundError(f"Session {session_id} does not exist.") from None
        except filelock.Timeout:
            raise OblixError(
                f"Session {session_id} is locked by another writer for over {self.lock_timeout}s; "
                f"try again, or remove {path / LOCK} if no Oblix process is running."
            ) from None
        try:
            if not (path / META).exists():
                raise SessionNotFoundError(f"Session {session_id} does not exist.")
            yield path
        finally:
            lock.release()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / INDEX, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        try:
            yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise OblixError(
                f"The session index {self.root / INDEX} failed: {exc}. Delete it; Oblix rebuilds it "
                "from the session files."
            ) from exc

    def _session_dirs(self) -> Iterator[Path]:
        for entry in os.scandir(self.root):
            if entry.is_dir() and not entry.name.startswith("."):
                yield Path(entry.path)

    # -- reading ------------------------------------------------------------------------

    def _read_meta(self, path: Path) -> dict[str, Any]:
        try:
            meta = json.loads((path / META).read_bytes())
        except FileNotFoundError:
            raise SessionNotFoundError(f"Session {path.name} does not exist.") from None
        except (OSError, ValueError) as exc:
            raise SessionCorruptedError(
                f"Session {path.name} has an unreadable {META}: {exc}. Other sessions are unaffected; "
                f"restore it from a backup or delete the session."
            ) from exc
        if not isinstance(meta, dict) or "created_at" not in meta:
            raise SessionCorruptedError(f"Session {path.name} has a malformed {META}.")
        return meta

    def _read_messages(self, path: Path, last: int | None = None) -> list[Message]:
        try:
            data = _tail(path / MESSAGES, last) if last is not None else (path / MESSAGES).read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        lines.pop()  # the text after the last newline: empty, or a torn unacknowledged append
        if last is not None:
            lines = lines[max(0, len(lines) - last) :]
        messages = []
        for number, line in enumerate(lines, 1):
            try:
                messages.append(Message.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise SessionCorruptedError(
                    f"Session {path.name}: line {number} of {MESSAGES} is not a valid message ({exc}). "
                    "Other sessions are unaffected; fix or remove that line."
                ) from exc
        return messages

    def _record(self, path: Path, meta: dict[str, Any], messages: Sequence[Message]) -> SessionRecord:
        return SessionRecord(
            id=path.name,
            title=meta.get("title"),
            created_at=meta["created_at"],
            updated_at=meta.get("updated_at"),
            messages=tuple(messages),
            context=meta.get("context") or {},
            metadata=meta.get("metadata") or {},
        )

    def load(self, session_id: str) -> SessionRecord:
        path = self._dir(session_id)
        meta = self._read_meta(path)
        return self._record(path, meta, self._read_messages(path))

    def load_recent(self, session_id: str, max_messages: int) -> SessionRecord:
        path = self._dir(session_id)
        meta = self._read_meta(path)
        return self._record(path, meta, self._read_messages(path, last=max(0, max_messages)))

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        return dict(self._read_meta(self._dir(session_id)).get("metadata") or {})

    def exists(self, session_id: str) -> bool:
        return (self._dir(session_id) / META).exists()

    def list(self, limit: int = 50, filter_metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if limit <= 0:
            return results
        with self._db() as db:
            rows = db.execute(
                "SELECT id, title, created_at, updated_at, message_count, metadata FROM sessions "
                "ORDER BY updated_ts DESC"
            )
            for sid, title, created, updated, count, raw in rows:
                metadata = json.loads(raw)
                if not matches_metadata(metadata, filter_metadata):
                    continue
                if not (self.root / sid / META).exists():  # index entry of a crashed create
                    continue
                results.append(
                    {
                        "id": sid,
                        "title": title,
                        "created_at": created,
                        "updated_at": updated,
                        "message_count": count,
                        "metadata": metadata,
                    }
                )
                if len(results) >= limit:
                    break
        return results

    # -- writing ------------------------------------------------------------------------

    def _index(self, record: SessionRecord, message_count: int, replace: bool = True) -> None:
        updated = record.last_updated
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        with self._db() as db:
            db.execute(
                f"{verb} INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.title,
                    record.created_at,
                    updated,
                    _ts(updated),
                    message_count,
                    json.dumps(record.metadata, ensure_ascii=False),
                ),
            )

    @staticmethod
    def _meta_bytes(record: SessionRecord) -> bytes:
        meta = {
            "title": record.title,
            "created_at": record.created_at,
            "updated_at": record.updated_at or record.created_at,
            "context": record.context,
            "metadata": record.metadata,
        }
        return json.dumps(meta, ensure_ascii=False, indent=1).encode()

    def create(self, session: SessionRecord) -> None:
        final = self._dir(session.id)
        if final.exists():
            raise SessionExistsError(f"Session {session.id} already exists.")
        staging = self.root / f".new-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            _write_file(staging / META, self._meta_bytes(session))
            _write_file(staging / MESSAGES, b"".join(_encode(m) for m in session.messages))
            _fsync_dir(staging)
            self._index_new(session)
            try:
                os.rename(staging, final)  # atomic; fails if the id was taken meanwhile
            except OSError:
                raise SessionExistsError(f"Session {session.id} already exists.") from None
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _index_new(self, session: SessionRecord) -> None:
        """Index a session about to be created, never overwriting a live session's row."""
        try:
            self._index(session, len(session.messages), replace=False)
        except sqlite3.IntegrityError:
            if (self._dir(session.id) / META).exists():
                raise SessionExistsError(f"Session {session.id} already exists.") from None
            self._index(session, len(session.messages))  # a row left by a create that crashed

    def append_messages(self, session_id: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        data = b"".join(_encode(m) for m in messages)
        with self._locked(session_id) as path:
            fd = os.open(path / MESSAGES, os.O_RDWR | os.O_APPEND)
            try:
                _cut_torn_tail(fd)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            updated = max((m.timestamp for m in messages), key=_ts)
            with self._db() as db:
                db.execute(
                    "UPDATE sessions SET message_count = message_count + ?, "
                    "updated_at = CASE WHEN updated_ts < ? THEN ? ELSE updated_at END, "
                    "updated_ts = MAX(updated_ts, ?) WHERE id = ?",
                    (len(messages), _ts(updated), updated, _ts(updated), session_id),
                )

    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        with self._locked(session_id) as path:
            meta = self._read_meta(path)
            meta["metadata"] = {**(meta.get("metadata") or {}), **metadata}
            meta["updated_at"] = utc_now()
            tmp = path / f".{META}.{uuid.uuid4().hex}.tmp"
            _write_file(tmp, json.dumps(meta, ensure_ascii=False, indent=1).encode())
            os.replace(tmp, path / META)
            _fsync_dir(path)
            with self._db() as db:
                db.execute(
                    "UPDATE sessions SET metadata = ?, updated_at = ?, updated_ts = ?, title = ? "
                    "WHERE id = ?",
                    (
                        json.dumps(meta["metadata"], ensure_ascii=False),
                        meta["updated_at"],
                        _ts(meta["updated_at"]),
                        meta.get("title"),
                        session_id,
                    ),
                )

    def delete(self, session_id: str) -> bool:
        try:
            with self._locked(session_id) as path:
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                os.rename(path, trash)
        except SessionNotFoundError:
            return False
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def rebuild_index(self) -> int:
        """Regenerate the index from the session files; returns how many sessions it holds.

        Unreadable sessions are left out (and logged); they still raise a clear error on load.
        """
        count = 0
        with self._db() as db:
            db.execute("DELETE FROM sessions")
        for path in self._session_dirs():
            try:
                record = self._record(path, self._read_meta(path), ())
            except OblixError as exc:
                log.warning("not indexing session %s: %s", path.name, exc)
                continue
            try:
                messages = self._read_messages(path)
            except SessionCorruptedError as exc:  # still listed; loading it reports the damage
                log.warning("session %s: %s", path.name, exc)
                count_lines = (path / MESSAGES).read_bytes().count(b"\n")
                self._index(record, count_lines)
            else:
                self._index(attrs.evolve(record, messages=tuple(messages)), len(messages))
            count += 1
        return count

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root)}
