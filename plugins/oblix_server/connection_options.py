"""The ``oblix server`` options for the connection limits (``oblix_server.connections``)."""

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
]


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection-limit options; the command receives them as keyword arguments."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func
