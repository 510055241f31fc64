"""The redis session store (extra ``oblix[redis]``), registered as ``redis``.

redis-py is imported only when a redis store is made, so ``import oblix_redis`` (and
loading the plugin) works without it; making the store then says how to install it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oblix_core import hookimpl
from oblix_core.errors import ConfigError

if TYPE_CHECKING:
    from oblix_redis.store import RedisSessionStore

__all__ = ["make_redis_store"]


def make_redis_store(**options: Any) -> RedisSessionStore:
    """A :class:`~oblix_redis.store.RedisSessionStore` (options: url, prefix, cluster, ttl, timeout)."""
    try:
        from oblix_redis.store import RedisSessionStore
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "redis":
            raise
        raise ConfigError(
            "The redis session store needs the redis-py library: pip install 'oblix[redis]'."
        ) from None
    return RedisSessionStore(**options)


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("redis", make_redis_store)
