"""Sessions in Redis (single server or Redis Cluster): see docs/store-redis.md.

Every key of a session shares the hash tag ``{<id>}`` (one cluster slot): a meta hash, a
metadata hash, a token hash, the list of recent messages and the list of older ones in
chunks of 100 (layout in :mod:`oblix_redis.lua`). Each operation on a session is one Lua
script, so it is atomic: an append checks that the session exists, RPUSHes the
messages, updates ``message_count`` and ``updated_at``, refreshes the TTL of every key
(server clock) and, on a single server, the listing index.

Creates and appends carry a nonce (derived from the caller's ``idempotency_key``, else
random) that the script remembers, so a write repeated after a lost reply, a reconnect
or a failover is applied once. Operations ride through a restart or a failover
(:mod:`oblix_redis.failover`: retries with backoff for ``retry_window`` seconds); with
``wait_replicas`` a write counts only once that many replicas acknowledged it (``WAIT``
on the connection that made the write).

The listing index (a sorted set by ``updated_at`` and one set per metadata key/value)
lives in the ``{#index}`` slot. On a single server the index update runs in the same
script as the session change. On a cluster it is a second script on the index slot:
once the session's own script has committed, the write is acknowledged, and an index
update that fails is queued and replayed (:mod:`oblix_redis.pending`), never reported
as the write's failure. The index can therefore lag a change, and hold entries of
sessions that are gone; listings verify every entry they return against the session and
drop dead ones, and :meth:`RedisSessionStore.repair_index` cleans the whole index.
Listings never use KEYS or SCAN.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import AuthenticationError
from redis.retry import Retry

import oblix_redis.codec as codec
import oblix_redis.lua as lua
from oblix.plugin import (
    LOCAL_ONLY_KEY,
    Message,
    OblixError,
    SessionChanges,
    SessionExistsError,
    SessionNotFoundError,
    SessionRecord,
    SessionStore,
    matches_metadata,
    utc_now,
    validate_session_id,
)
from oblix_redis.append import MISSING, run_script, single_append_script
from oblix_redis.failover import REDIS_ERRORS, node_of, ride_through, slot_node, transient
from oblix_redis.health import RedisHealthStore
from oblix_redis.idempotency import RedisIdempotencyRecords
from oblix_redis.ledger import RedisUsageLedger
from oblix_redis.options import RedisOptions, url_secrets
from oblix_redis.pending import PendingIndex, Update

log = logging.getLogger(__name__)

T = TypeVar("T")

_SUFFIXES = ("meta", "md", "tok", "msgs", "chunks")
_HEAD = ("title", "created_at", "last_updated", "count")
_BATCH = 200
Rows = list[dict[str, Any]]
_RETRY_SAFE = "The operation can simply be retried."


class _NotReplicated(Exception):
    """A write the master applied but fewer than ``wait_replicas`` replicas acknowledged in time."""

    def __init__(self, acked: int) -> None:
        super().__init__(acked)
        self.acked = acked


class RedisSessionStore(SessionStore):
    """Session store on Redis; options ``url``, ``prefix``, ``cluster``, ``ttl``, ``timeout``,
    ``retry_window``, ``wait_replicas``, ``wait_timeout``."""

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        prefix: str | None = None,
        cluster: bool | str = False,
        ttl: int | str | None = None,
        timeout: float | str = 5.0,
        retry_window: float | str = 10.0,
        wait_replicas: int | str = 0,
        wait_timeout: int | str = 1000,
    ) -> None:
        self.options = RedisOptions.parse(
            url, prefix, cluster, ttl, timeout, retry_window, wait_replicas, wait_timeout
        )
        self._secrets = url_secrets(self.options.url)
        self._ix = f"{self.options.prefix}{{#index}}:"
        self._ttl = str(self.options.ttl or 0)
        self._pending = PendingIndex(self._describe)
        self._client: Any = None
        self._client = self._call("connect", self._connect)
        single = not self.options.cluster
        source = {
            "create": lua.SINGLE_CREATE if single else lua.SESSION_CREATE,
            "append": single_append_script(self.options.prefix, self._ix, self.options.ttl or 0)
            if single
            else lua.SESSION_APPEND,
            "update": lua.SINGLE_UPDATE if single else lua.SESSION_UPDATE,
            "delete": lua.SINGLE_DELETE if single else lua.SESSION_DELETE,
            "sync": lua.INDEX_SYNC,
            "touch": lua.INDEX_TOUCH,
            "drop": lua.INDEX_DROP,
            "read": lua.READ,
            "changes": lua.CHANGES,
            "page": lua.FILTER_PAGE,
        }
        self._scripts: dict[str, Script] = {k: self._client.register_script(v) for k, v in source.items()}

    def _connect(self) -> Any:
        opts = self.options
        common: dict[str, Any] = {
            "socket_connect_timeout": opts.timeout,
            "socket_timeout": opts.timeout,
            "decode_responses": True,
            # A few quick retries here; ride_through retries for the whole retry_window.
            # Safe for every operation: writes carry a nonce (see lua.py).
            "retry": Retry(ExponentialBackoff(cap=0.25, base=0.02), 2),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            "health_check_interval": 30,
        }
        if opts.cluster:
            return RedisCluster.from_url(opts.url, **common)
        return redis.Redis.from_url(opts.url, **common)

    def __repr__(self) -> str:
        o = self.options
        return f"<RedisSessionStore url={o.display_url} prefix={o.prefix!r} cluster={o.cluster} ttl={o.ttl}>"

    # -- errors and retries -------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: Exception) -> str:
        return f"{type(exc).__name__}: {self._scrub(str(exc))}"

    def _call(self, doing: str, call: Callable[[], T], key: str | None = None, note: str = _RETRY_SAFE) -> T:
        """``call()`` ridden through restarts and failovers; its failure as an OblixError."""
        try:
            return ride_through(call, self.options.retry_window, self._refresh)
        except REDIS_ERRORS as exc:
            raise self._failure(exc, doing, key, note) from None
        except _NotReplicated as short:
            raise self._not_replicated(short.acked, doing, key, note) from None

    def _refresh(self, exc: BaseException) -> None:
        """Before a retry on a cluster: re-read the slot map (a replica may have been promoted)."""
        if self.options.cluster and self._client is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # the next attempt fails, or finds it refreshed
                self._client.nodes_manager.initialize()

    def _where(self, exc: BaseException, key: str | None) -> str:
        url = self.options.display_url
        if not self.options.cluster:
            return f"Redis at {url}"
        node = node_of(exc) or (slot_node(self._client, key) if key and self._client else None)
        return f"Redis Cluster node {node} (cluster {url})" if node else f"Redis Cluster {url}"

    def _failure(self, exc: BaseException, doing: str, key: str | None, note: str) -> OblixError:
        where, detail = self._where(exc, key), self._describe(exc)  # type: ignore[arg-type]
        if isinstance(exc, AuthenticationError):
            return OblixError(
                f"{where} rejected the credentials ({detail}) while trying to {doing}: "
                "fix the password in the store's url."
            )
        if transient(exc):
            window = self.options.retry_window
            waited = f" (retried for {window:g} s)" if window else ""
            if self.options.cluster:
                advice = (
                    "Check that node and the cluster (CLUSTER INFO): a failed master's replica is "
                    "promoted after cluster-node-timeout; a master without a replica must be restarted."
                )
            else:
                advice = (
                    "Start the server or fix the store's url; this store reconnects by itself once "
                    "the server is back."
                )
            return OblixError(
                f"{where} is unreachable or failing over ({detail}) while trying to {doing}{waited}. "
                f"{advice} {note}"
            )
        cluster = " with every cluster slot served" if self.options.cluster else ""
        return OblixError(
            f"{where} failed to {doing}: {detail}. Check the server's logs and that it is "
            f"Redis >= 6.2{cluster}."
        )

    def _not_replicated(self, acked: int, doing: str, key: str | None, note: str) -> OblixError:
        o = self.options
        node = slot_node(self._client, key) if o.cluster and key else None
        where = f"Redis Cluster node {node}" if node else f"Redis at {o.display_url}"
        return OblixError(
            f"{where} applied the write to {doing}, but only {acked} of the {o.wait_replicas} replicas "
            f"asked for (wait_replicas) acknowledged it within {o.wait_timeout} ms, so it is NOT "
            "acknowledged: a failover now could lose it. Check the replicas (INFO replication) or "
            f"lower wait_replicas. {note}"
        )

    # -- keys ---------------------------------------------------------------------------

    def _keys(self, session_id: str) -> list[str]:
        base = self._base(session_id)
        return [base + suffix for suffix in _SUFFIXES]

    def _base(self, session_id: str) -> str:
        """``<prefix>{<id>}:``, the start of every key of the session (and its hash tag)."""
        return f"{self.options.prefix}{{{validate_session_id(session_id)}}}:"

    def _write(self, script: str, session_id: str, args: Sequence[str]) -> Any:
        """One session script (index prefix, id and TTL first); see :meth:`_run_write`."""
        return self._run_write(script, [self._base(session_id)], [self._ix, session_id, self._ttl, *args])

    def _run_write(self, script: str, keys: list[str], argv: Sequence[str]) -> Any:
        """One write script; with ``wait_replicas``, followed by WAIT on the same connection."""
        wanted = self.options.wait_replicas
        if not wanted:
            return run_script(self._scripts[script], self._client, keys, argv)
        client = self._client
        if self.options.cluster:  # the connection must be the master's that runs the script
            client = client.get_redis_connection(client.get_node_from_key(keys[0]))
        pipe = client.pipeline(transaction=False)
        self._scripts[script](keys=keys, args=argv, client=pipe)
        pipe.execute_command("WAIT", wanted, self.options.wait_timeout)
        result, acked = pipe.execute()
        if int(acked) < wanted:
            raise _NotReplicated(int(acked))
        return result

    def _index(self, update: Update) -> None:
        """A cluster's index update after a committed session write: applied, or queued."""
        self._pending.apply(update, self._run_index)

    def _run_index(self, update: Update) -> None:
        script, args = update
        self._scripts[script](keys=[self._ix + "updated"], args=args)

    def _replay_index(self) -> None:
        if len(self._pending):
            self._pending.replay(self._run_index)

    def _index_drop(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self._run_index(("drop", [self._ix] + [x for pair in pairs for x in pair]))

    # -- writing ------------------------------------------------------------------------

    def create(self, session: SessionRecord, *, idempotency_key: str | None = None) -> None:
        """Store a new session; a ``create`` repeated with the same ``idempotency_key`` succeeds once."""
        sid = validate_session_id(session.id)
        score = codec.score(session.last_updated)
        args = [
            _nonce(idempotency_key),
            session.created_at,
            session.updated_at or session.created_at,
            session.last_updated,
            score,
            codec.dumps(session.title),
            codec.dumps(session.context),
            *codec.metadata_args(session.metadata),
            *(codec.encode_message(m) for m in session.messages),
        ]
        note = _write_note(idempotency_key)
        doing = f"create session {sid}"
        result = self._call(doing, lambda: self._write("create", sid, args), self._base(sid), note)
        if result[0] == 0:
            raise SessionExistsError(f"Session {sid} already exists.")
        if self.options.cluster:
            self._index(("sync", [self._ix, sid, result[1], score, "set", "0", *result[2]]))

    def append_messages(
        self, session_id: str, messages: Sequence[Message], *, idempotency_key: str | None = None
    ) -> None:
        """Append ``messages``; a call repeated with the same ``idempotency_key`` is applied once.

        One round trip: on a single server the lean script of :mod:`oblix_redis.append`
        (index update included); on a cluster the session's script, then the index's.
        """
        base = self._base(session_id)  # validates the id
        if not messages:
            return
        newest = messages[0].timestamp
        if len(messages) > 1:
            newest = max((codec.score_value(m.timestamp), m.timestamp) for m in messages)[1]
        args = [_nonce(idempotency_key), codec.score(newest), newest]
        args += [codec.encode_message(m) for m in messages]
        doing, note = f"append to session {session_id}", _write_note(idempotency_key)
        if not self.options.cluster:
            if self._call(doing, lambda: self._run_write("append", [base], args), base, note) == MISSING:
                raise SessionNotFoundError(f"Session {session_id} does not exist.")
            return
        result = self._call(doing, lambda: self._write("append", session_id, args), base, note)
        if result[0] == MISSING:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        self._index(("touch", [self._ix, session_id, result[1]]))

    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        validate_session_id(session_id)
        now = utc_now()
        args = [now, codec.score(now), *codec.metadata_args(metadata)]
        doing = f"update the metadata of session {session_id}"
        result = self._call(doing, lambda: self._write("update", session_id, args), self._base(session_id))
        if result[0] == -1:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        if self.options.cluster:
            self._index(("sync", [self._ix, session_id, result[1], result[3], "gt", "0", *result[2]]))

    def delete(self, session_id: str) -> bool:
        """Delete a session (``False`` if absent; a retry after a lost reply may say ``False``)."""
        doing = f"delete session {session_id}"
        result = self._call(doing, lambda: self._write("delete", session_id, []), self._base(session_id))
        if self.options.cluster:
            self._index(("drop", [self._ix, session_id, ""]))
        return bool(result[0])

    # -- reading ------------------------------------------------------------------------

    def _read(self, session_id: str, last: int | None) -> SessionRecord:
        """The session with all its messages (``last=None``) or its last ``last`` ones."""
        base, count = self._base(session_id), "all" if last is None else max(0, last)
        # one script: a consistent snapshot in one round trip
        doing = f"load session {session_id}"
        result = self._call(doing, lambda: self._scripts["read"](keys=[base], args=[count]), base)
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

    def load_changes(self, session_id: str, cursor: Hashable | None, max_messages: int) -> SessionChanges:
        """What changed since ``cursor``: one script comparing the session's message counter
        and metadata version, returning only the messages appended since (one round trip)."""
        base, most = self._base(session_id), max(0, max_messages)
        known = cursor if isinstance(cursor, tuple) and len(cursor) == 4 else ("", "", 0, "")
        args = [known[0], known[1], known[2], most, known[3]]
        doing = f"load session {session_id}"
        result = self._call(doing, lambda: self._scripts["changes"](keys=[base], args=args), base)
        if not result:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        head = result[1]
        new_cursor = (head[0] or "", head[1], int(head[2]), head[3] or "")
        messages = codec.decode_messages(session_id, result[2])
        header = None
        if len(result) > 3:
            header = codec.decode_record(session_id, _pairs(result[3]), _pairs(result[4]), ())
        if result[0] == 1:
            return SessionChanges(new_cursor, tuple(messages), True, header)
        return SessionChanges(
            new_cursor, tuple(messages[len(messages) - most :] if most else ()), False, header
        )

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        keys = self._keys(session_id)

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(keys[0])
            pipe.hgetall(keys[1])
            return pipe.execute()

        exists, fields = self._call(f"read the metadata of session {session_id}", read, keys[0])
        if not exists:
            raise SessionNotFoundError(f"Session {session_id} does not exist.")
        return codec.decode_metadata(session_id, fields)

    def exists(self, session_id: str) -> bool:
        key = self._keys(session_id)[0]
        return bool(self._call(f"look up session {session_id}", lambda: self._client.exists(key), key))

    # -- listing ------------------------------------------------------------------------

    def _candidates(self, wanted: dict[str, Any] | None, size: int) -> Iterator[list[tuple[str, float]]]:
        """Pages of (id, score), newest first: the whole index, or the filter's intersection."""
        updated = self._ix + "updated"
        sets = [  # local_only=true/false means "is the session local-only": matched on the rows
            self._ix + "md:" + codec.token(k, v)
            for k, v in (wanted or {}).items()
            if not (k == LOCAL_ONLY_KEY and isinstance(v, bool))
        ]
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
        if limit <= 0:
            return []
        return self._call("list sessions", lambda: self._list(limit, filter_metadata))

    def _list(self, limit: int, filter_metadata: dict[str, Any] | None) -> Rows:
        self._replay_index()  # index updates this process could not make yet come first
        results: Rows = []
        dead: list[tuple[str, str]] = []
        for batch in self._candidates(filter_metadata, min(_BATCH, limit)):
            for (sid, seen), (head, md) in zip(batch, self._summaries([s for s, _ in batch]), strict=True):
                if head[1] is None:  # expired or deleted: its index entry is stale
                    dead.append((sid, repr(float(seen))))
                    continue
                try:
                    row = codec.summary(sid, head, md)
                except OblixError as exc:  # damaged sessions are skipped (load names the damage)
                    log.warning("not listing session %s: %s", sid, self._scrub(str(exc)))
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
        return self._call("repair the session index", lambda: self._repair(rescan))

    def _repair(self, rescan: bool) -> dict[str, int]:
        self._replay_index()
        counts = {"dropped": 0, "reindexed": 0}
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

    def iter_session_ids(self) -> Iterator[str]:
        """Every session's id, from the sessions' own keys (SCAN of every master: O(keys in the
        database)), so sessions the listing index misses or damaged ones are included."""
        found = self._call("enumerate the sessions", lambda: list(self._scan_ids()))
        yield from dict.fromkeys(found)

    def _scan_ids(self) -> Iterator[str]:
        prefix = self.options.prefix
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "{*}:meta"
        for key in self._client.scan_iter(match=pattern, count=1000):
            yield key[len(prefix) + 1 : -len("}:meta")]

    def _rescan(self) -> int:
        count = 0
        for sid in self._scan_ids():
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

    def usage_ledger(self) -> RedisUsageLedger:
        """The usage ledger in this Redis, shared by every host (see :mod:`oblix_redis.ledger`)."""
        return RedisUsageLedger(self._client, self.options.prefix)

    def idempotency_records(self) -> RedisIdempotencyRecords:
        """Results of requests sent with an idempotency key (see :mod:`oblix_redis.idempotency`)."""
        return RedisIdempotencyRecords(self._client, self.options.prefix)

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
            "retry_window": o.retry_window,
            "wait_replicas": o.wait_replicas,
            "wait_timeout": o.wait_timeout,
        }


def _nonce(idempotency_key: str | None) -> str:
    """The token naming one write (16 hex digits: collisions are negligible): derived from the
    caller's idempotency key, so that the caller's retry carries it too, else random."""
    if idempotency_key is None:
        return os.urandom(8).hex()
    return hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _write_note(idempotency_key: str | None) -> str:
    """What an error of a create or an append says about retrying it."""
    if idempotency_key is not None:
        return "Retrying with the same idempotency_key is safe: the store applies the write once."
    return (
        "It may have been stored before the failure: load the session before retrying, or pass an "
        "idempotency_key so that a retry is applied once."
    )


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A dict from a flat HGETALL-style [field, value, ...] reply (as scripts return it)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
