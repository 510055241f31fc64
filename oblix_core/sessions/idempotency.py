"""Records kept under idempotency keys: what makes a retried request answered once.

A request sent with an idempotency key (``execute(..., idempotency_key=...)``, or the
server's ``Idempotency-Key`` header) first *claims* its key: a ``running`` record with the
claimant's token and a lease. When it is answered, the record becomes ``done`` and holds
the result, kept until ``expires_at`` (24 h by default). A repeat finds the record: a
``done`` one is replayed, a ``running`` one is waited for (or refused with 409), and a
``running`` one whose lease passed (its process died, or it failed and ended its lease) is
taken over by compare-and-set, keeping the record's ``epoch`` (so every try of one request has
one request id; a key used after its record expired starts another epoch).

The records live beside the sessions, so every worker and every server on one store sees
them: a store provides :meth:`~oblix_core.sessions.store.SessionStore.idempotency_records`
(Redis, S3); :class:`FileIdempotencyRecords` keeps them in a folder for the file store and
for stores that provide none (one machine's processes share it).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import filelock

from oblix_core.errors import SessionCorruptedError, SessionError
from oblix_core.fileio import write_atomically

#: How long a key's result is kept by default (Stripe's and the IETF draft's 24 hours).
DEFAULT_TTL_S = 24 * 3600.0


@attrs.frozen
class KeyedRecord:
    """What is stored under one idempotency key."""

    state: Literal["running", "done"]
    #: Per-field digests of the request, so a repeat with another body can say what differs.
    fingerprint: dict[str, str]
    #: The claimant's token: only its owner may complete or release a running record.
    owner: str
    #: A running record whose lease passed belongs to a process that died; it may be taken over.
    lease_until: float
    #: When the record is forgotten (a later request with the key is then a new request).
    expires_at: float
    #: The answer (``execute``'s result dict) once ``done``.
    result: dict[str, Any] | None = None
    #: Made by the claim that found the key free and kept by every try that takes the claim
    #: over: the tries of one request share a request id, and a request with the key after its
    #: record expired gets another one. Empty in records written before it existed.
    epoch: str = ""

    def live(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyedRecord:
        data = json.loads(text)
        return cls(
            state=data["state"],
            fingerprint=dict(data["fingerprint"]),
            owner=str(data["owner"]),
            lease_until=float(data["lease_until"]),
            expires_at=float(data["expires_at"]),
            result=data.get("result"),
            epoch=str(data.get("epoch") or ""),
        )


def key_digest(key: str) -> str:
    """A fixed-length, path- and key-safe name for an idempotency key (keys are caller text)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyRecords(abc.ABC):
    """Keyed records shared by every Oblix process on one store. Methods may block; they are
    called from worker threads when :attr:`blocking`."""

    blocking: bool = True

    @abc.abstractmethod
    def claim(self, key: str, record: KeyedRecord) -> KeyedRecord | None:
        """Store ``record`` under ``key`` if no live record is there, atomically; return ``None``
        when stored, else the live record found (running or done; a running one may be stale)."""

    @abc.abstractmethod
    def replace(self, key: str, record: KeyedRecord, *, owner: str) -> bool:
        """Put ``record`` under ``key`` if the record there is owned by ``owner`` (compare and
        set); ``False`` if another owner holds the key now or it is gone."""

    @abc.abstractmethod
    def release(self, key: str, *, owner: str) -> None:
        """Forget the record under ``key`` if ``owner`` holds it (a failed request: a retry may run)."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyedRecord | None:
        """The live record under ``key``, or ``None``."""

    def close(self) -> None:  # noqa: B027 - optional: nothing to release by default
        """Release connections or handles."""


class FileIdempotencyRecords(IdempotencyRecords):
    """One JSON file per key (named by its SHA-256) in ``folder``; each read-modify-write
    holds the key's file lock, so the processes of one machine agree. Expired files are
    replaced when their key is used again and swept now and then (lock files stay: removing
    one that another process waits on would let two processes in)."""

    #: Seconds to wait for a key's lock (held by another process) before a clear error.
    lock_timeout = 30.0

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._created = False
        self._writes = 0

    def _path(self, key: str) -> Path:
        if not self._created:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._created = True
        return self.folder / f"{key_digest(key)}.json"

    def _lock(self, path: Path) -> filelock.BaseFileLock:
        return filelock.FileLock(str(path) + ".lock", timeout=self.lock_timeout)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """Hold ``path``'s lock; a lock another process keeps too long is a :class:`SessionError`."""
        try:
            with self._lock(path):
                yield
        except filelock.Timeout:
            raise SessionError(
                f"The idempotency record {path} stayed locked by another process for "
                f"{self.lock_timeout:g} s; the request was not run. Retry with the same key (a "
                "process stuck holding the lock must be stopped first)."
            ) from None

    @staticmethod
    def _read(path: Path) -> KeyedRecord | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = KeyedRecord.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionCorruptedError(
                f"The idempotency record {path} is damaged ({exc}). Delete the file; the request "
                "it held will then run again if retried."
            ) from exc
        return record if record.live() else None

    def _write(self, path: Path, record: KeyedRecord) -> None:
        write_atomically(path, record.to_json().encode("utf-8"), mode=0o600)
        self._writes += 1
        if self._writes % 256 == 0:
            self.sweep()

    def claim(self, key: str, record: KeyedRecord) -> KeyedRecord | None:
        path = self._path(key)
        with self._locked(path):
            found = self._read(path)
            if found is not None:
                return found
            self._write(path, record)
            return None

    def replace(self, key: str, record: KeyedRecord, *, owner: str) -> bool:
        path = self._path(key)
        with self._locked(path):
            found = self._read(path)
            if found is None or found.owner != owner:
                return False
            self._write(path, record)
            return True

    def release(self, key: str, *, owner: str) -> None:
        path = self._path(key)
        with self._locked(path):
            found = self._read(path)
            if found is not None and found.owner == owner:
                path.unlink(missing_ok=True)

    def get(self, key: str) -> KeyedRecord | None:
        return self._read(self._path(key))

    def sweep(self) -> int:
        """Delete expired records; returns how many went."""
        gone, now = 0, time.time()
        for path in self.folder.glob("*.json"):
            try:
                if KeyedRecord.from_json(path.read_bytes()).expires_at > now:
                    continue
                with self._lock(path):  # read again: a claim may have replaced it meanwhile
                    if KeyedRecord.from_json(path.read_bytes()).expires_at <= now:
                        path.unlink()
                        gone += 1
            except (OSError, ValueError, KeyError, TypeError, filelock.Timeout):
                continue
        return gone
