"""Sessions in Redis (single server or Redis Cluster): see docs/store-redis.md.

Every key of a session shares the hash tag ``{<id>}`` (one cluster slot): a meta hash, a
metadata hash, a token hash, the list of recent messages and the list of older ones in
chunks of 100 (layout in :mod:`oblix_redis.lua`). Each operation on a session is one Lua
script, so it is atomic: an append checks that the session exists, RPUSHes the
messages, updates ``message_count`` and ``updated_at``, refreshes the TTL of every key
(server clock) and, on a single server, the listing index. Creates and appends carry a
nonce, so redis-py's retry after a lost reply never applies one twice.

The listing index (a sorted set by ``updated_at`` and one set per metadata key/value)
lives in the ``{#index}`` slot. On a single server the index update runs in the same
script as the session change. On a cluster it is a second script on the index slot, so
the index can briefly lag a change, and it can hold entries of sessions that are gone
(expired, or a crash between the two steps); listings verify every entry they return
against the session and drop dead ones, and :meth:`RedisSessionStore.repair_index`
cleans the whole index. Listings never use KEYS or SCAN.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.retry import Retry

from oblix_core.errors import OblixError, SessionExistsError, SessionNotFoundError
from oblix_core.records import Message, SessionRecord, matches_metadata, utc_now, validate_session_id
from oblix_core.stores import SessionStore
from oblix_redis import codec, lua
from oblix_redis.health import RedisHealthStore
from oblix_redis.options import RedisOptions, url_secrets

log = logging.getLogger(__name__)

_SUFFIXES = ("meta", "md", "tok", "msgs", "chunks")
_HEAD = ("title", "created_at", "last_updated", "count")
_BATCH = 200


class RedisSessionStore(SessionStore):
    """Session store on Redis; options ``url``, ``prefix``, ``cluster``, ``ttl``, ``timeout``."""

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        prefix: str | None = None,
        cluster: bool | str = False,
        ttl: int | str | None = None,
        timeout: float | str = 5.0,
    ) -> None:
        self.options = RedisOptions.parse(url, prefix, cluster, ttl, timeout)
        self._secrets = url_secrets(self.options.url)
        self._ix = f"{self.options.prefix}{{#index}}:"
        self._ttl = str(self.options.ttl or 0)
        with self._errors("connect"):
            self._client = self._connect()
        single = not self.options.cluster
        source = {
            "create": lua.SINGLE_CREATE if single else lua.SESSION_CREATE,
            "append": lua.SINGLE_APPEND if single else lua.SESSION_APPEND,
            "update": lua.SINGLE_UPDATE if single else lua.SESSION_UPDATE,
            "delete": lua.SINGLE_DELETE if single else lua.SESSION_DELETE,
            "sync": lua.INDEX_SYNC,
            "touch": lua.INDEX_TOUCH,
            "drop": lua.INDEX_DROP,
            "read": lua.READ,
            "page": lua.FILTER_PAGE,
        }
        self._scripts: dict[str, Script] = {k: self._client.register_script(v) for k, v in source.items()}

    def _connect(self) -> Any:
        opts = self.options
        common: dict[str, Any] = {
            "socket_connect_timeout": opts.timeout,
            "socket_timeout": opts.timeout,
            "decode_responses": True,
            # Safe to retry every operation: creates and appends carry a nonce (see lua.py).
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            "health_check_interval": 30,
        }
        if opts.cluster:
            return RedisCluster.from_url(opts.url, **common)
        return redis.Redis.from_url(opts.url, **common)

    def __repr__(self) -> str:
        o = self.options
        return f"<RedisSessionStore url={o.display_url} prefix={o.prefix!r} cluster={o.cluster} ttl={o.ttl}>"

    # -- errors -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn redis-py errors into OblixErrors that name the (redacted) server and what to do."""
        try:
            yield
        except redis.RedisError as exc:
            raise self._failure(exc, doing) from None

    def _failure(self, exc: redis.RedisError, doing: str) -> OblixError:
        where = self.options.display_url
        detail = f"{type(exc).__name__}: {self._scrub(str(exc))}"
        if isinstance(exc, redis.AuthenticationError):
            return OblixError(
                f"Redis at {where} rejected the credentials ({detail}) while trying to {doing}: "
                "fix the password in the store's url."
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return OblixError(
                f"Redis at {where} is unreachable ({detail}) while trying to {doing}. Start the server "
                "or fix the store's url; this store reconnects by itself once the server is back, so "
                "the operation can simply be retried."
            )
        cluster = " with every cluster slot served" if self.options.cluster else ""
        return OblixError(
            f"Redis at {where} failed to {doing}: {detail}. Check the server's logs and that it is "
            f"Redis >= 6.2{cluster}."
        )

    # -- keys ---------------------------------------------------------------------------

    def _keys(self, session_id: str) -> list[str]:
        base = self._base(session_id)
        return [base + suffix for suffix in _SUFFIXES]

    def _base(self, session_id: str) -> str:
        """``<prefix>{<id>}:``, the start of every key of the session (and its hash tag)."""
        return f"{self.options.prefix}{{{validate_session_id(session_id)}}}:"

    def _run(self, script: str, session_id: str, args: Sequence[str]) -> Any:
        return self._scripts[script](
            keys=[self._base(session_id)], args=[self._ix, session_id, self._ttl, *args]
        )

    def _index_sync(self, session_id: str, ver: str, score: str, zmode: str, tokens: Sequence[str]) -> None:
        args = [self._ix, session_id, ver, score, zmode, "0", *tokens]
        self._scripts["sync"](keys=[self._ix + "updated"], args=args)

    def _index_drop(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            args = [self._ix] + [x for pair in pairs for x in pair]
            self._scripts["drop"](keys=[self._ix + "updated"], args=args)

    # -- writing ------------------------------------------------------------------------

    def create(self, session: SessionRecord) -> None:
        validate_session_id(session.id)
        score = codec.score(session.last_updated)
        args = [
            _nonce(),
            session.created_at,
            session.updated_at or session.created_at,
            session.last_updated,
            score,
            codec.dumps(session.title),
            codec.dumps(session.context),
            *codec.metadata_args(session.metadata),
            *(codec.encode_message(m) for m in session.messages),
        ]
        with self._errors(f"create session {session.id}"):
            result = self._run("create", session.id, args)
            if result[0] == 0:
                raise SessionExistsError(f"Session {session.id} already exists.")
            if self.options.cluster:
                self._index_sync(session.id, result[1], score, "set", result[2])

    def append_messages(self, session_id: str, messages: Sequence[Message]) -> None:
        validate_session_id(session_id)
        if not messages:
            return
        newest = messages[0].timestamp
        if len(messages) > 1:
            newest = max((codec.score_value(m.timestamp), m.timestamp) for m in messages)[1]
        args = [_nonce(), codec.score(newest), newest, *(codec.encode_message(m) for m in messages)]
        try:  # the hot path: no context manager
            result = self._run("append", session_id, args)
            if self.options.cluster and result[0] != -1:
                self._scripts["touch"](keys=[self._ix + "updated"], args=[self._ix, session_id, result[1]])
        except redis.RedisError as exc:
            raise self._failure(exc, f"append to session {session_id}") from None
        if result[0] == -1:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")

    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        validate_session_id(session_id)
        now = utc_now()
        args = [now, codec.score(now), *codec.metadata_args(metadata)]
        with self._errors(f"update the metadata of session {session_id}"):
            result = self._run("update", session_id, args)
            if result[0] == -1:
                raise SessionNotFoundError(f"Session {session_id} does not exist.")
            if self.options.cluster:
                self._index_sync(session_id, result[1], result[3], "gt", result[2])

    def delete(self, session_id: str) -> bool:
        with self._errors(f"delete session {session_id}"):
            result = self._run("delete", session_id, [])
            if self.options.cluster:
                self._index_drop([(session_id, "")])
        return bool(result[0])

    # -- reading ------------------------------------------------------------------------

    def _read(self, session_id: str, last: int | None) -> SessionRecord:
        """The session with all its messages (``last=None``) or its last ``last`` ones."""
        base = self._base(session_id)
        try:  # one script: a consistent snapshot in one round trip
            result = self._scripts["read"](keys=[base], args=["all" if last is None else max(0, last)])
        except redis.RedisError as exc:
            raise self._failure(exc, f"load session {session_id}") from None
        if not result:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        record = codec.decode_record(session_id, _pairs(result[0]), _pairs(result[1]), result[2])
        if last is not None and len(record.messages) > last:  # the first chunk read may hold more
            record = attrs.evolve(record, messages=record.messages[len(record.messages) - last :])
        return record

    def load(self, session_id: str) -> SessionRecord:
        return self._read(session_id, None)

    def load_recent(self, session_id: str, max_messages: int) -> SessionRecord:
        return self._read(session_id, max(0, max_messages))

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        keys = self._keys(session_id)
        with self._errors(f"read the metadata of session {session_id}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(keys[0])
            pipe.hgetall(keys[1])
            exists, fields = pipe.execute()
        if not exists:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        return codec.decode_metadata(session_id, fields)

    def exists(self, session_id: str) -> bool:
        key = self._keys(session_id)[0]
        with self._errors(f"look up session {session_id}"):
            return bool(self._client.exists(key))

    # -- listing ------------------------------------------------------------------------

    def _candidates(self, wanted: dict[str, Any] | None, size: int) -> Iterator[list[tuple[str, float]]]:
        """Pages of (id, score), newest first: the whole index, or the filter's intersection."""
        updated = self._ix + "updated"
        sets = [self._ix + "md:" + codec.token(k, v) for k, v in (wanted or {}).items()]
        start = 0
        while True:
            if sets:  # filtered on the server; only this page of the matches comes back
                flat = self._scripts["page"](keys=[updated, *sets], args=[start, size])
                page = [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
            else:
                page = self._client.zrevrange(updated, start, start + size - 1, withscores=True)
            if not page:
                return
            yield page
            if len(page) < size:  # that was the last page
                return
            start += len(page)

    def _summaries(self, ids: Sequence[str]) -> list[tuple[list[str | None], dict[str, str]]]:
        pipe = self._client.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self._key(sid, "meta"), _HEAD)
            pipe.hgetall(self._key(sid, "md"))
        replies = pipe.execute()
        return list(zip(replies[::2], replies[1::2], strict=True))

    def list(self, limit: int = 50, filter_metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if limit <= 0:
            return results
        dead: list[tuple[str, str]] = []
        with self._errors("list sessions"):
            for batch in self._candidates(filter_metadata, min(_BATCH, limit)):
                for (sid, seen), (head, md) in zip(
                    batch, self._summaries([s for s, _ in batch]), strict=True
                ):
                    if head[1] is None:  # expired or deleted: its index entry is stale
                        dead.append((sid, repr(float(seen))))
                        continue
                    try:
                        row = codec.summary(sid, head, md)
                    except OblixError as exc:  # unreadable sessions are skipped
                        log.warning("not listing session %s: %s", sid, exc)
                        continue
                    if matches_metadata(row["metadata"], filter_metadata):
                        results.append(row)
                        if len(results) >= limit:
                            break
                if len(results) >= limit:
                    break
            self._index_drop(dead)
        return results

    # -- maintenance --------------------------------------------------------------------

    def repair_index(self, rescan: bool = False) -> dict[str, int]:
        """Drop index entries of sessions that are gone; with ``rescan``, re-index every session.

        The first part walks the index only (ZSCAN). ``rescan=True`` also SCANs the keyspace
        of every server for this prefix's sessions (O(keys in the database)): use it after a
        crash of a cluster client between a session write and its index update, or after
        restoring data written by another tool.
        """
        counts = {"dropped": 0, "reindexed": 0}
        with self._errors("repair the session index"):
            batch: list[tuple[str, float]] = []
            for entry in self._client.zscan_iter(self._ix + "updated", count=500):
                batch.append(entry)
                if len(batch) >= 500:
                    counts["dropped"] += self._drop_dead(batch)
                    batch = []
            counts["dropped"] += self._drop_dead(batch)
            if rescan:
                counts["reindexed"] = self._rescan()
        return counts

    def _drop_dead(self, entries: Sequence[tuple[str, float]]) -> int:
        if not entries:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for sid, _ in entries:
            pipe.exists(self._key(sid, "meta"))
        alive = pipe.execute()
        dead = [(sid, repr(float(seen))) for (sid, seen), ok in zip(entries, alive, strict=True) if not ok]
        self._index_drop(dead)
        return len(dead)

    def _rescan(self) -> int:
        prefix = self.options.prefix
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "{*}:meta"
        count = 0
        for key in self._client.scan_iter(match=pattern, count=1000):
            sid = key[len(prefix) + 1 : -len("}:meta")]
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._key(sid, "meta"), ["ver", "score"])
            pipe.hvals(self._key(sid, "tok"))
            (ver, score), tokens = pipe.execute()
            if ver is None:  # deleted meanwhile
                continue
            args = [self._ix, sid, ver, score, "set", "1", *tokens]
            self._scripts["sync"](keys=[self._ix + "updated"], args=args)
            count += 1
        return count

    def _key(self, session_id: str, suffix: str) -> str:
        """One key of a session already known to the index (no id validation)."""
        return f"{self.options.prefix}{{{session_id}}}:{suffix}"

    def shared_health(self) -> RedisHealthStore:
        """Model health shared through this Redis by every Oblix instance using it."""
        return RedisHealthStore(self._client, self.options.prefix)

    def close(self) -> None:
        self._client.close()

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "name": self.name,
            "url": o.display_url,
            "prefix": o.prefix,
            "cluster": o.cluster,
            "ttl": o.ttl,
        }


def _nonce() -> str:
    """A random token naming one write (16 hex digits: collisions are negligible)."""
    return os.urandom(8).hex()


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A dict from a flat HGETALL-style [field, value, ...] reply (as scripts return it)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
