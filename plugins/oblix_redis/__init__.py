"""The redis session store (extra ``oblix[redis]``), registered as ``redis``.

Without redis-py the plugin is skipped and ``oblix plugins`` shows it as not installed;
choosing ``--store redis`` then says which extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oblix.plugin import hookimpl, needs

if TYPE_CHECKING:
    from oblix_redis.store import RedisSessionStore

needs("redis", install="pip install 'oblix[redis]'")

__all__ = ["make_redis_store"]


def make_redis_store(**options: Any) -> RedisSessionStore:
    """A :class:`~oblix_redis.store.RedisSessionStore` (options: url, prefix, cluster, ttl, timeout,
    retry_window, wait_replicas, wait_timeout)."""
    from oblix_redis.options import check_option_names
    from oblix_redis.store import RedisSessionStore  # the library loads only when a store is made

    check_option_names(options)
    return RedisSessionStore(**options)


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("redis", make_redis_store)
