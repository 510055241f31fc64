"""Idempotency records in S3, shared by every Oblix server and worker on the bucket and prefix.

One small JSON object per key, ``<prefix>idempotency/<sha256 of the key>.json``. A claim is
a conditional ``PUT`` (``If-None-Match: *``, or ``If-Match`` over an expired record); a
compare-and-set on the owner is a ``GET`` then a ``PUT`` with ``If-Match`` on the ETag read,
retried when another writer got there first; a damaged record is a
:class:`SessionCorruptedError` naming the object (never overwritten); a release overwrites
the record as expired (conditionally), so no unconditional delete can remove another owner's claim. Expired
records are simply overwritten; a bucket lifecycle rule on ``idempotency/`` can sweep them.
"""

from __future__ import annotations

import time

from oblix.plugin import IdempotencyRecords, KeyedRecord, SessionCorruptedError, SessionError, key_digest
from oblix_s3.objects import ConditionFailed, S3Objects

#: Tries of one compare-and-set against concurrent writers before giving up (each lost
#: try means another writer changed the record; the next read sees its change).
_TRIES = 8


class S3IdempotencyRecords(IdempotencyRecords):
    """Keyed records as S3 objects written with conditional requests (see the module docstring)."""

    def __init__(self, objects: S3Objects, prefix: str) -> None:
        self.objects, self.prefix = objects, prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}idempotency/{key_digest(key)}.json"

    def _read(self, name: str) -> tuple[KeyedRecord | None, str | None]:
        found = self.objects.get(name)
        if found is None:
            return None, None
        body, etag = found
        try:
            return KeyedRecord.from_json(body), etag
        except (ValueError, KeyError, TypeError) as exc:  # as the file and Redis records: never overwritten
            raise SessionCorruptedError(
                f"The idempotency record {self.objects.where(name)} is damaged ({exc}). Delete the "
                "object; the request it held will then run again if retried."
            ) from None

    def claim(self, key: str, record: KeyedRecord) -> KeyedRecord | None:
        name = self._key(key)
        for _ in range(_TRIES):
            found, etag = self._read(name)
            if found is not None and found.live():
                return found
            try:
                self.objects.put(name, record.to_json().encode(), if_match=etag, create=etag is None)
                return None
            except ConditionFailed:
                continue
        raise SessionError(
            f"The idempotency record {self.objects.where(name)} is contended: {_TRIES} conditional "
            "writes in a row lost to other writers, so the key was not claimed and the request was "
            "not run. Retry with the same key."
        )

    def replace(self, key: str, record: KeyedRecord, *, owner: str) -> bool:
        name = self._key(key)
        for _ in range(_TRIES):
            found, etag = self._read(name)
            if found is None or not found.live() or found.owner != owner:
                return False
            try:
                self.objects.put(name, record.to_json().encode(), if_match=etag)
                return True
            except ConditionFailed:
                continue
        return False

    def release(self, key: str, *, owner: str) -> None:
        found = self.get(key)
        if found is not None and found.owner == owner:
            now = time.time()
            gone = KeyedRecord("running", found.fingerprint, owner, now, now)  # expired at once
            self.replace(key, gone, owner=owner)

    def get(self, key: str) -> KeyedRecord | None:
        found, _ = self._read(self._key(key))
        return found if found is not None and found.live() else None
