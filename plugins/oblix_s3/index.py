"""The listing index of the S3 store: 16 JSON shard objects updated with conditional writes.

Each shard maps session id -> summary (title, timestamps, message count, metadata, plus
the manifest's ``uid`` and ``version``). A writer changes a shard by read-modify-write
with ``If-Match`` (``If-None-Match: *`` for a new shard) and retries on conflict, so
concurrent writers never lose each other's entries. An update carrying an older
manifest ``version`` than the entry's, or another incarnation's ``uid``, is ignored, so
late writers never roll an entry back. Shards are cached with their ETags: an
unchanged shard is revalidated with a conditional GET (304, no body).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from oblix.plugin import OblixError
from oblix_s3.layout import FORMAT, INDEX_SHARDS, Keys, dumps
from oblix_s3.objects import ConditionFailed, S3Objects

log = logging.getLogger(__name__)

Entries = dict[str, dict[str, Any]]
#: Changes the entries of one shard in place; returns whether anything changed.
Change = Callable[[Entries], bool]

MAX_CONFLICTS = 200


def backoff(attempt: int) -> None:
    """Sleep a random, growing while after the ``attempt``-th lost conditional write."""
    time.sleep(random.uniform(0, min(0.25, 0.002 * 2 ** min(attempt, 10))))


class ShardedIndex:
    """Read and change the listing index's shards."""

    def __init__(self, objects: S3Objects, keys: Keys, pool: Callable[[], Executor]) -> None:
        self.objects = objects
        self.keys = keys
        self._pool = pool
        self._cache: dict[int, tuple[str, Entries]] = {}
        self._lock = threading.Lock()
        self.conflicts = 0

    def _read(self, shard: int) -> tuple[str | None, Entries]:
        """The shard's ``(etag, entries)``: ``(None, {})`` when it does not exist yet."""
        key = self.keys.shard(shard)
        with self._lock:
            cached = self._cache.get(shard)
        found = self.objects.get(key, if_none_match=cached[0] if cached else None)
        if found is None:
            return None, {}
        body, etag = found
        if cached and not body and etag == cached[0]:
            return cached
        try:
            data = json.loads(body)
            entries = dict(data["sessions"])
        except (ValueError, KeyError, TypeError):
            log.warning("index shard %s is unreadable; run rebuild_index() to regenerate it", key)
            entries = {}
        with self._lock:
            self._cache[shard] = (etag, entries)
        return etag, entries

    def read_all(self) -> Entries:
        """Every entry of every shard (the shards are fetched in parallel)."""
        merged: Entries = {}
        for _, entries in self._pool().map(self._read, range(INDEX_SHARDS)):
            merged.update(entries)
        return merged

    def change(self, session_id: str, change: Change) -> None:
        """Apply ``change`` to the shard holding ``session_id``, retrying lost races."""
        self.change_shard(Keys.shard_of(session_id), change)

    def change_shard(self, shard: int, change: Change) -> None:
        """Apply ``change`` to shard number ``shard``, retrying lost races.

        The first attempt writes over the cached copy with ``If-Match`` (no GET); a lost
        condition, or a cached copy that ``change`` leaves alone, is re-read first.
        """
        key = self.keys.shard(shard)
        trust_cache = True
        for attempt in range(MAX_CONFLICTS):
            with self._lock:
                cached = self._cache.get(shard) if trust_cache else None
            etag, current = cached or self._read(shard)
            entries = dict(current)
            if not change(entries):
                if cached is None:
                    return
                trust_cache = False  # confirm "nothing to do" against the stored shard
                continue
            body = dumps({"format": FORMAT, "sessions": entries})
            try:
                new_etag = self.objects.put(key, body, if_match=etag, create=etag is None)
            except ConditionFailed:
                trust_cache = False
                with self._lock:
                    self.conflicts += 1
                backoff(attempt)
                continue
            with self._lock:
                self._cache[shard] = (new_etag, entries)
            return
        raise OblixError(
            f"The S3 listing index shard {self.objects.where(key)} changed under us {MAX_CONFLICTS} times "
            "in a row; too many concurrent writers. Try again."
        )

    def upsert(self, session_id: str, entry: dict[str, Any], *, replace: bool = False) -> None:
        """Insert or update ``session_id``'s entry unless the stored one is newer.

        ``replace=True`` (a create) overwrites whatever is there.
        """

        def apply(entries: Entries) -> bool:
            old = entries.get(session_id)
            if (
                not replace
                and old is not None
                and (old.get("uid") != entry["uid"] or int(old.get("version", 0)) >= entry["version"])
            ):
                return False
            entries[session_id] = entry
            return True

        self.change(session_id, apply)

    def remove(self, session_id: str) -> None:
        self.change(session_id, lambda entries: entries.pop(session_id, None) is not None)

    def intend(self, session_id: str, entry: dict[str, Any]) -> None:
        """Record a create about to commit: ``entry`` flagged ``pending`` (the time, in seconds).

        An entry already there that is not pending is left alone (a live session keeps
        its entry; the create will find its manifest taken).
        """

        def apply(entries: Entries) -> bool:
            old = entries.get(session_id)
            if old is not None and not (isinstance(old, dict) and old.get("pending")):
                return False
            entries[session_id] = {**entry, "pending": time.time()}
            return True

        self.change(session_id, apply)

    def settle(self, session_id: str, expected: dict[str, Any], fresh: dict[str, Any] | None) -> None:
        """Replace the entry ``expected`` by ``fresh`` (``None``: remove it) unless it changed meanwhile."""

        def apply(entries: Entries) -> bool:
            if entries.get(session_id) != expected:
                return False
            if fresh is None:
                del entries[session_id]
            else:
                entries[session_id] = fresh
            return True

        self.change(session_id, apply)

    def replace_all(self, entries: Entries) -> None:
        """Overwrite every shard with ``entries`` (used by ``rebuild_index``)."""
        shards: list[Entries] = [{} for _ in range(INDEX_SHARDS)]
        for session_id, entry in entries.items():
            shards[Keys.shard_of(session_id)][session_id] = entry
        for number, content in enumerate(shards):
            self.change_shard(number, lambda e, content=content: _swap(e, content))  # type: ignore[misc]

    def forget_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _swap(entries: Entries, content: Entries) -> bool:
    if entries == content:
        return False
    entries.clear()
    entries.update(content)
    return True
