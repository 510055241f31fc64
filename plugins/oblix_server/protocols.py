"""The connection guard (:mod:`oblix_server.connections`) as uvicorn's HTTP protocol: which one, and
the ``uvicorn.Config`` arguments that put it in place."""

from __future__ import annotations

import logging
import resource
from typing import Any

from oblix.plugin import ConfigError
from oblix_server.connections import (
    BACKLOG,
    ConnectionTable,
    GuardedH11Protocol,
    GuardedProtocol,
    connection_limit,
)
from oblix_server.settings import ServerSettings

log = logging.getLogger("oblix_server")


def guarded_class(http: str) -> type[GuardedProtocol]:
    """The guarded protocol for ``http`` (one of :data:`HTTP_IMPLEMENTATIONS`)."""
    if http in ("auto", "httptools"):
        try:
            from oblix_server.connections_httptools import GuardedHttpToolsProtocol
        except ImportError:
            if http == "httptools":
                raise ConfigError("--http httptools needs httptools: pip install 'oblix[server]'.") from None
        else:
            return GuardedHttpToolsProtocol
    return GuardedH11Protocol


def protocol_class(
    settings: ServerSettings, http: str = "auto"
) -> tuple[type[GuardedProtocol], ConnectionTable]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to a new table, and the table."""
    table = ConnectionTable(settings, connection_limit(settings.max_connections))
    base = guarded_class(http)
    return type(f"Oblix{base.__name__.removeprefix('Guarded')}", (base,), {"table": table}), table


def uvicorn_options(settings: ServerSettings, http: str = "auto") -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that put these limits in place."""
    protocol, table = protocol_class(settings, http)
    if table.limit < settings.max_connections:
        log.warning(
            "oblix server: at most %d open connections (--max-connections %d lowered to stay within "
            "the descriptor limit, ulimit -n %d)",
            table.limit,
            settings.max_connections,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_timeout, "backlog": BACKLOG}
