"""The ``oblix server`` options for the connection limits (``oblix_server.connections``) and the
request bounds and allowed hosts (``oblix_server.edges``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from oblix_server.settings import ServerSettings

_DEFAULTS = ServerSettings()

_OPTIONS = [
    click.option(
        "--max-connections",
        type=click.IntRange(1),
        default=_DEFAULTS.max_connections,
        show_default=True,
        help="Open connections at most (lowered to fit ulimit -n). Beyond it a new connection "
        "replaces the one waiting longest for its request headers, or gets 503.",
    ),
    click.option(
        "--header-timeout",
        type=click.FloatRange(0, min_open=True),
        default=_DEFAULTS.header_timeout,
        show_default=True,
        help="Seconds a connection may take to send its request headers; then 408 and closed.",
    ),
    click.option(
        "--body-timeout",
        type=click.FloatRange(0, min_open=True),
        default=_DEFAULTS.body_timeout,
        show_default=True,
        help="Seconds to send a request body, plus 1 s per --body-min-rate bytes received.",
    ),
    click.option(
        "--body-min-rate",
        type=click.IntRange(1),
        default=_DEFAULTS.body_min_rate,
        show_default=True,
        help="Bytes per second a request body must keep up after --body-timeout.",
    ),
    click.option(
        "--keep-alive-timeout",
        type=click.FloatRange(0, min_open=True),
        default=_DEFAULTS.keep_alive_timeout,
        show_default=True,
        help="Seconds an idle keep-alive connection stays open.",
    ),
    click.option(
        "--send-timeout",
        type=click.FloatRange(0, min_open=True),
        default=_DEFAULTS.send_timeout,
        show_default=True,
        help="Seconds an answer may wait for a client that reads nothing; then the connection is "
        "closed and its request stopped.",
    ),
    click.option(
        "--max-header-bytes",
        type=click.IntRange(1024),
        default=_DEFAULTS.max_header_bytes,
        show_default=True,
        help="Largest request head (request line and headers); larger ones get 431.",
    ),
    click.option(
        "--max-messages",
        type=click.IntRange(1),
        default=_DEFAULTS.max_messages,
        show_default=True,
        help="Most messages one chat request may carry; more get 413.",
    ),
    click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="NAME",
        help="A Host name requests may use besides the loopback ones (e.g. behind a reverse proxy); "
        "repeatable. Without --api-key only these and loopback names are served.",
    ),
]


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection-limit options; the command receives them as keyword arguments."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func
