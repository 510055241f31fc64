"""Sessions as files: one folder per session, an append-only message log, a SQLite index.

Layout under ``root``::

    <session id>/meta.json        title, timestamps, context, metadata (replaced atomically)
    <session id>/messages.jsonl   one JSON message per line, append-only, fsynced
    <session id>/.lock            inter-process lock for writers of this session
    .index.sqlite3                summaries for fast, sorted, filtered listing (a cache)
    .new-*, .trash-*, .tmp-*      staging of creates, deletes and metadata updates

Ids never start with a dot, so no session can take the name of a store file (the index
was ``index.sqlite3`` before; such an old file is removed as the cache it is).

Guarantees:

- An append is complete or not acknowledged. The byte count of every write is checked
  and short writes are continued; if a write or fsync fails (full disk, I/O error) the
  log is truncated back to its size before the call and a :class:`FileStoreError`
  says nothing was stored. A writer killed at any instant leaves every acknowledged
  append readable, at worst with a torn, unacknowledged last line that readers ignore
  and the next writer cuts off. Appends cost the same whatever the history length.
- Writers in several threads or processes are serialised per session by a file lock,
  so no message is lost or interleaved.
- The session files are the truth; the index is a cache. Once the log is written an
  append is acknowledged even if the index update fails (a warning is logged): the
  caller is never told to retry something that was stored. Each index row records the
  log's byte size and the ``meta.json`` stamp (inode, mtime, size) it was derived from;
  ``list`` stats both files of each row it returns (two stats per row) and re-derives,
  then stores, any row whose files changed behind the index's back. A metadata update
  first flags its row ``pending`` (if even that fails, nothing is changed and the
  caller is told so), so a filtered listing, which trusts the indexed metadata of
  unflagged rows, re-derives flagged rows until the update is recorded, or until a
  listing that takes the session's lock finds its writer gone. So ``message_count`` and
  ``metadata`` in a listing always match the files, after any crash. A missing or
  damaged index is rebuilt from the files.
- Disk full, a read-only folder, permission denied: a :class:`FileStoreError` naming
  the path and the cause, and saying whether anything was stored. A read-only root
  still serves ``load``, ``list`` and ``get_metadata`` (from the index opened read-only,
  or from a copy scanned into memory).
- Staging and temp files left by killed writers are removed after ``temp_grace``
  seconds; operations on a missing session create nothing on disk.
- Private to the user whatever the umask: folders ``0700``, files ``0600`` (the index
  too); a store with looser modes is tightened when opened (:mod:`oblix_file.permissions`).
- A damaged session (``meta.json`` unparsable or of the wrong shape, a log without its
  ``meta.json``, a message line of the wrong types) is skipped by listings and raises
  :class:`~oblix_core.errors.SessionCorruptedError` when loaded; :meth:`iter_session_ids`
  still yields it, so migration and ``oblix sessions repair`` report it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import filelock

from oblix.plugin import (
    FileIdempotencyRecords,
    Message,
    OblixError,
    SessionChanges,
    SessionExistsError,
    SessionNotFoundError,
    SessionRecord,
    SessionStore,
    UsageLedger,
    matches_metadata,
    parse_timestamp,
    utc_now,
    validate_session_id,
)
from oblix_file.changes import load_changes
from oblix_file.files import (
    DIR_MODE,
    FILE_MODE,
    AppendNotUndone,
    FileStoreError,
    append_complete,
    fsync_dir,
    io_error,
    release_flock,
    remove_quietly,
    stamp,
    try_flock,
    write_file,
)
from oblix_file.index import INDEX, PENDING, SessionIndex, Summary, remove_legacy_index
from oblix_file.ledger import file_ledger
from oblix_file.permissions import make_private
from oblix_file.reading import (
    MESSAGES,
    META,
    latest,
    log_size,
    missing,
    present,
    read_messages,
    read_meta,
    summarise,
    to_record,
)

log = logging.getLogger(__name__)

LOCK = ".lock"
#: Prefixes of the store's staging/temp entries in the root (swept after ``temp_grace``).
TEMP_PREFIXES = (".new-", ".trash-", ".tmp-")
__all__ = ["INDEX", "LOCK", "MESSAGES", "META", "FileSessionStore", "FileStoreError"]

_NOT_STORED = "Nothing was stored; retrying is safe."


def _encode(message: Message) -> bytes:
    return json.dumps(message.to_dict(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _index_failed(session_id: str, what: str, exc: BaseException) -> None:
    log.warning(
        "session %s: %s was stored, but the listing index could not be updated (%s); "
        "listings repair it from the session files",
        session_id,
        what,
        exc,
    )


class FileSessionStore(SessionStore):
    """File-backed session store rooted at ``root`` (see the module docstring)."""

    name = "file"

    def __init__(
        self, root: str | os.PathLike[str], lock_timeout: float = 30.0, temp_grace: float = 3600.0
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.lock_timeout = lock_timeout
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.scandir(self.root).close()
        except OSError as exc:
            raise io_error("Cannot open the session folder", self.root, exc, outcome=_NOT_STORED) from exc
        writable = os.access(self.root, os.W_OK) and not os.statvfs(self.root).f_flag & os.ST_RDONLY
        if writable:
            make_private(self.root)
            self._sweep_leftovers(temp_grace)
            remove_legacy_index(self.root)
        self._index = SessionIndex(self.root, self._scan)
        try:
            rebuild = self._index.open(writable)
        except (sqlite3.Error, OSError) as exc:
            self._index.close()
            raise io_error(
                "Cannot open the session index", self.root / INDEX, exc, outcome="No session was changed."
            ) from exc
        if rebuild:
            self.rebuild_index()

    def _sweep_leftovers(self, older_than: float) -> None:
        """Remove staging, trash and temp entries left by writers that died long ago."""
        cutoff = time.time() - older_than
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIXES):
                    self._remove_if_stale(entry, cutoff)

    @staticmethod
    def _remove_if_stale(entry: os.DirEntry[str], cutoff: float) -> None:
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                return
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass

    def _sweep_session_temps(self, path: Path, older_than: float = 3600.0) -> None:
        """Remove ``.meta.json.*.tmp`` files that older versions staged inside a session."""
        cutoff = time.time() - older_than
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith(f".{META}.") and entry.name.endswith(".tmp"):
                        self._remove_if_stale(entry, cutoff)
        except OSError:
            pass

    def contains_path(self, path: os.PathLike[str] | str) -> bool:
        """Whether ``path`` (symlinks resolved) lies inside this store's root."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return resolved.is_relative_to(self.root)

    # -- paths and locks ----------------------------------------------------------------

    def _dir(self, session_id: str) -> Path:
        path = self.root / validate_session_id(session_id)
        if path.parent != self.root:  # belt and braces: ids never contain separators
            raise OblixError(f"Session id {session_id!r} resolves outside the store root.")
        return path

    @staticmethod
    def _missing(session_id: str) -> SessionNotFoundError:
        return SessionNotFoundError(f"Session {session_id} does not exist.")

    @contextmanager
    def _locked(self, session_id: str, action: str, timeout: float | None = None) -> Iterator[Path]:
        """Hold the session's writer lock; creates nothing if the session does not exist."""
        path = self._dir(session_id)
        if not present(path):
            raise missing(session_id)
        quick = try_flock(path / LOCK)  # the same lock, at once when it is free
        if quick is not None:
            try:
                if not present(path):  # deleted meanwhile (the lock went with the folder)
                    raise missing(session_id)
                yield path
            finally:
                release_flock(quick)
            return
        wait = self.lock_timeout if timeout is None else timeout
        lock = filelock.FileLock(path / LOCK, timeout=wait, mode=FILE_MODE)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise OblixError(
                f"Session {session_id} is locked by another writer for over {self.lock_timeout}s; "
                f"try again, or remove {path / LOCK} if no Oblix process is running."
            ) from None
        except OSError as exc:
            if not present(path):
                raise missing(session_id) from None
            failed = f"Cannot {action} session {session_id}"
            raise io_error(failed, path / LOCK, exc, outcome=_NOT_STORED) from exc
        deleted_meanwhile = False
        try:
            if not present(path):
                deleted_meanwhile = True
                raise missing(session_id)
            yield path
        finally:
            lock.release()
            if deleted_meanwhile:  # the lock re-created the folder that a delete had moved away
                remove_quietly(path / LOCK)
                with suppress(OSError):
                    os.rmdir(path)

    def _session_dirs(self) -> Iterator[Path]:
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    yield Path(entry.path)

    # -- reading ------------------------------------------------------------------------

    # Messages are read before the metadata: a local-only turn marks the metadata before
    # its messages are appended, so a reader that sees those messages also sees the mark.

    def load(self, session_id: str) -> SessionRecord:
        path = self._dir(session_id)
        messages = read_messages(path)
        return to_record(path, read_meta(path), messages)

    def load_recent(self, session_id: str, max_messages: int) -> SessionRecord:
        path = self._dir(session_id)
        messages = read_messages(path, last=max(0, max_messages))
        return to_record(path, read_meta(path), messages)

    def load_changes(self, session_id: str, cursor: Hashable | None, max_messages: int) -> SessionChanges:
        """Messages appended since ``cursor`` (see :mod:`oblix_file.changes`: a stat and a small read)."""
        return load_changes(self._dir(session_id), cursor, max_messages)

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        return dict(read_meta(self._dir(session_id)).get("metadata") or {})

    def exists(self, session_id: str) -> bool:
        return present(self._dir(session_id))

    def iter_session_ids(self) -> Iterator[str]:
        """Every session folder's id, from the folders (not the index), damaged sessions included."""
        for path in self._session_dirs():
            if present(path):
                yield path.name

    # -- the listing --------------------------------------------------------------------

    def _current(self, row: Summary) -> Summary | None:
        """``row`` if it still describes the files, else a re-derived row; ``None``: skip it."""
        path = self.root / row.id
        if row.meta_stamp != PENDING:
            try:
                meta_stamp = stamp(os.stat(path / META))
            except OSError:  # the row of a crashed create, or of a deleted session
                return None
            if meta_stamp == row.meta_stamp and log_size(path) == row.log_size:
                return row
        try:
            return summarise(path)
        except OblixError as exc:  # unreadable sessions are skipped; loading them says why
            log.debug("listing skips session %s: %s", row.id, exc)
            return None

    def list(self, limit: int = 50, filter_metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        results: list[Summary] = []
        repairs: list[tuple[Summary, Summary]] = []
        try:
            rows = self._index.summaries(filter_metadata)
            try:
                for row in rows:
                    summary = self._current(row)
                    if summary is None:
                        continue
                    if summary is not row:
                        repairs.append((row, summary))
                    if matches_metadata(summary.metadata, filter_metadata):
                        results.append(summary)
                        if len(results) >= limit:
                            break
            finally:
                rows.close()
        except sqlite3.Error as exc:
            raise io_error("Cannot read the session index", self._index.path, exc, outcome="") from exc
        if repairs:
            self._store_repairs(repairs)
            results.sort(key=lambda s: parse_timestamp(s.updated_at), reverse=True)
        return [s.public() for s in results]

    def _store_repairs(self, repairs: Sequence[tuple[Summary, Summary]]) -> None:
        """Store re-derived rows (best effort: a read-only or busy index is repaired later)."""
        for stale, fresh in repairs:
            try:
                if stale.meta_stamp != PENDING:
                    self._index.repair(stale, fresh)
                    continue
                # A metadata update is under way, or its writer died: only the lock tells.
                with self._locked(stale.id, "list", timeout=0) as path:
                    self._index.repair(stale, summarise(path))
            except (sqlite3.Error, OblixError) as exc:
                log.debug("index row of %s not repaired now: %s", stale.id, exc)

    def rebuild_index(self) -> int:
        """Regenerate the index from the session files; returns how many sessions it holds.

        Sessions whose ``meta.json`` is unreadable are left out (and logged); loading
        them still raises a clear error.
        """
        summaries = list(self._scan())
        try:
            self._index.reset(summaries)
        except sqlite3.Error as exc:
            raise io_error("Cannot rebuild the session index", self._index.path, exc, outcome="") from exc
        return len(summaries)

    def _scan(self) -> Iterator[Summary]:
        for path in self._session_dirs():
            self._sweep_session_temps(path)
            try:
                yield summarise(path)
            except OblixError as exc:
                log.warning("not indexing session %s: %s", path.name, exc)

    # -- writing ------------------------------------------------------------------------

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

    def create(self, session: SessionRecord, *, idempotency_key: str | None = None) -> None:
        final = self._dir(session.id)
        if os.path.lexists(final):
            raise SessionExistsError(f"Session {session.id} already exists.")
        staging = self.root / f".new-{uuid.uuid4().hex}"
        failed = f"Cannot create session {session.id}"
        try:
            try:
                summary = self._stage(staging, session)
            except OSError as exc:
                raise io_error(failed, staging, exc, outcome=_NOT_STORED) from exc
            try:
                self._index_new(summary)
            except sqlite3.Error as exc:
                raise io_error(failed, self._index.path, exc, outcome=_NOT_STORED) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            os.rename(staging, final)  # atomic; fails if the id was taken meanwhile
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.lexists(final):
                raise SessionExistsError(f"Session {session.id} already exists.") from None
            raise io_error(failed, final, exc, outcome=_NOT_STORED) from exc
        try:
            fsync_dir(self.root)
        except OSError as exc:
            outcome = "The session was written but may not survive a crash."
            error = io_error(failed, self.root, exc, outcome=outcome)
            error.stored = True
            raise error from exc

    def _stage(self, staging: Path, session: SessionRecord) -> Summary:
        """Write a new session's files into ``staging``; returns its listing row."""
        staging.mkdir(mode=DIR_MODE)
        log_bytes = b"".join(_encode(m) for m in session.messages)
        write_file(staging / META, self._meta_bytes(session))
        write_file(staging / MESSAGES, log_bytes)
        fsync_dir(staging)
        return Summary(
            id=session.id,
            title=session.title,
            created_at=session.created_at,
            updated_at=session.last_updated,
            message_count=len(session.messages),
            metadata=session.metadata,
            log_size=len(log_bytes),
            meta_stamp=stamp(os.stat(staging / META)),  # a rename keeps inode and mtime
        )

    def _index_new(self, summary: Summary) -> None:
        """Index a session about to be created, never overwriting a live session's row."""
        try:
            self._index.insert(summary)
        except sqlite3.IntegrityError:
            if (self._dir(summary.id) / META).exists():
                raise SessionExistsError(f"Session {summary.id} already exists.") from None
            self._index.insert(summary, replace=True)  # a row left by a create that crashed

    def append_messages(
        self, session_id: str, messages: Sequence[Message], *, idempotency_key: str | None = None
    ) -> None:
        if not messages:
            return
        data = b"".join(_encode(m) for m in messages)
        with self._locked(session_id, "append to") as path:
            before = self._append(session_id, path / MESSAGES, data)
            updated = latest(*(m.timestamp for m in messages))
            try:
                after = before + len(data)
                if not self._index.record_append(session_id, len(messages), before, after, updated):
                    self._index.insert(summarise(path), replace=True)
            except (sqlite3.Error, OblixError) as exc:
                _index_failed(session_id, f"an append of {len(messages)} messages", exc)

    @staticmethod
    def _append(session_id: str, log_path: Path, data: bytes) -> int:
        """Append ``data`` completely or not at all; returns the log's size before it."""
        failed = f"Cannot append to session {session_id}"
        try:
            fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise io_error(failed, log_path, exc, outcome=_NOT_STORED) from exc
        try:
            return append_complete(fd, data)
        except AppendNotUndone as exc:
            raise io_error(
                failed,
                log_path,
                exc,
                outcome=f"The messages were not acknowledged, and undoing the partial write failed too "
                f"({exc.undo}); the next append removes an incomplete last line.",
            ) from exc
        except OSError as exc:
            raise io_error(failed, log_path, exc, outcome=f"{_NOT_STORED} The log is unchanged.") from exc
        finally:
            os.close(fd)

    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        failed = f"Cannot update the metadata of session {session_id}"
        unchanged = f"{_NOT_STORED} The metadata is unchanged."
        with self._locked(session_id, "update the metadata of") as path:
            self._sweep_session_temps(path)
            meta = read_meta(path)
            meta["metadata"] = {**(meta.get("metadata") or {}), **metadata}
            meta["updated_at"] = utc_now()
            try:  # listings re-derive the row until the change is recorded (or settled after a crash)
                self._index.mark_pending(session_id)
            except sqlite3.Error as exc:
                raise io_error(failed, self._index.path, exc, outcome=unchanged) from exc
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            try:
                write_file(tmp, json.dumps(meta, ensure_ascii=False, indent=1).encode())
                os.replace(tmp, path / META)
            except OSError as exc:
                remove_quietly(tmp)
                raise io_error(failed, path / META, exc, outcome=unchanged) from exc
            self._index_metadata(session_id, path, meta)

    def _index_metadata(self, session_id: str, path: Path, meta: dict[str, Any]) -> None:
        try:
            fsync_dir(path)
            new = Summary(
                id=session_id,
                title=meta.get("title"),
                created_at=meta["created_at"],
                updated_at=meta["updated_at"],
                message_count=0,
                metadata=meta["metadata"],
                log_size=0,
                meta_stamp=stamp(os.stat(path / META)),
            )
            if not self._index.record_metadata(session_id, new):
                self._index.insert(summarise(path), replace=True)
        except (OSError, sqlite3.Error, OblixError) as exc:
            _index_failed(session_id, "a metadata update", exc)

    def delete(self, session_id: str) -> bool:
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        try:
            with self._locked(session_id, "delete") as path:
                try:
                    os.rename(path, trash)
                except OSError as exc:
                    raise io_error(
                        f"Cannot delete session {session_id}", path, exc, outcome="The session is unchanged."
                    ) from exc
        except SessionNotFoundError:
            return False
        try:
            self._index.remove(session_id)
        except sqlite3.Error as exc:  # the row is skipped by listings (its folder is gone)
            log.warning("session %s was deleted, but its index row remains: %s", session_id, exc)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def close(self) -> None:
        """Close the index connections of every thread."""
        self._index.close()

    def usage_ledger(self) -> UsageLedger:
        """The usage ledger in ``<root>/.usage.sqlite3`` (see :mod:`oblix_file.ledger`)."""
        return file_ledger(self.root)

    def idempotency_records(self) -> FileIdempotencyRecords:
        """Results of requests sent with an idempotency key, in ``<root>/.idempotency/``."""
        return FileIdempotencyRecords(self.root / ".idempotency")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root)}
