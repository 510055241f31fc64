"""Riding through a server restart or a Redis Cluster failover, and naming what failed.

:func:`ride_through` retries an operation with backoff for up to the store's
``retry_window`` while the error is one a restart or a failover produces (connection
refused or reset, timeouts, ``CLUSTERDOWN``, ``TRYAGAIN``, ``MOVED`` during promotion,
``READONLY`` from a demoted master, a slot missing from the client's map). Every other
error (bad credentials, a script error) fails at once. Only operations that are safe to
repeat are passed to it: every write carries a nonce (see :mod:`oblix_redis.lua`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

T = TypeVar("T")

#: Errors redis-py raises: RedisClusterException is not a RedisError.
REDIS_ERRORS = (redis.RedisError, RedisClusterException)

_TRANSIENT = (
    redis.ConnectionError,  # refused, reset, BusyLoadingError while a restarted server loads
    redis.TimeoutError,
    ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted"
    TryAgainError,
    AskError,  # MovedError too: the slot map is being rewritten
    ReadOnlyError,  # a demoted master, still named by a stale slot map
    RedisClusterException,  # SlotNotCoveredError: the slot has no master yet
)
_FIRST_DELAY = 0.05
_MAX_DELAY = 0.25


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is what a restart or a failover produces (worth retrying)."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    return isinstance(exc, _TRANSIENT)


def ride_through(call: Callable[[], T], window: float, before_retry: Callable[[BaseException], None]) -> T:
    """``call()``, retried with backoff (50 ms doubling to 250 ms) for up to ``window`` seconds
    while it fails with a :func:`transient` error; ``before_retry`` runs before each retry."""
    deadline = time.monotonic() + window
    delay = _FIRST_DELAY
    while True:
        try:
            return call()
        except REDIS_ERRORS as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            before_retry(exc)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)


def node_of(exc: BaseException) -> str | None:
    """``host:port`` of the server an error came from, when redis-py recorded it."""
    for source in (getattr(exc, "connection", None), exc):
        host, port = getattr(source, "host", None), getattr(source, "port", None)
        if isinstance(host, str) and host and port:
            return f"{host}:{port}"
    return None


def slot_node(client: Any, key: str) -> str | None:
    """``host:port`` of the master the client's slot map names for ``key`` (None if unknown)."""
    try:
        node = client.get_node_from_key(key)
    except Exception:
        return None
    return f"{node.host}:{node.port}" if node is not None else None
