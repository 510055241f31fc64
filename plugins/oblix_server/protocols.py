"""The ``uvicorn.Config`` arguments that put the connection guard (:mod:`oblix_server.connections`)
in place, over the HTTP parser ``--http`` names."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import resource
from typing import Any

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from oblix.plugin import ConfigError
from oblix_server.connections import BACKLOG, ConnectionGuard
from oblix_server.settings import ServerSettings

log = logging.getLogger("oblix_server")

#: Bytes h11 may buffer beyond the guard's own head bound (the guard refuses first, with a 431).
H11_SLACK = 1024


def parser(http: str) -> str:
    """The parser ``--http`` names: ``auto`` is httptools when installed, else h11."""
    installed = importlib.util.find_spec("httptools") is not None
    if http == "httptools" and not installed:
        raise ConfigError("--http httptools needs httptools: pip install 'oblix[server]'.")
    if http == "auto":
        return "httptools" if installed else "h11"
    return http


def uvicorn_protocol(http: str) -> type[asyncio.Protocol]:
    """uvicorn's own protocol class for the parser ``http`` names (by uvicorn's public table)."""
    protocol: type[asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS[parser(http)])
    return protocol


def uvicorn_options(settings: ServerSettings, http: str = "auto") -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that put these limits in place."""
    guard = ConnectionGuard(settings, uvicorn_protocol(http))
    if guard.table.limit < settings.max_connections:
        log.warning(
            "oblix server: at most %d open connections (--max-connections %d lowered to stay within "
            "the descriptor limit, ulimit -n %d)",
            guard.table.limit,
            settings.max_connections,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
    return {
        "http": guard,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "backlog": BACKLOG,
        "h11_max_incomplete_event_size": settings.max_header_bytes + H11_SLACK,
    }
