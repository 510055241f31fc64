"""The server's settings, and the rule that a public bind needs an API key."""

from __future__ import annotations

import hmac
import ipaddress
import socket

import attrs

from oblix.plugin import ConfigError

#: Default largest request body, in bytes (4 MiB).
DEFAULT_BODY_LIMIT = 4 * 1024 * 1024
#: Default largest request head (request line and headers), in bytes (16 KiB, h11's own default).
DEFAULT_HEADER_LIMIT = 16 * 1024
#: Default largest number of messages in one chat request.
DEFAULT_MESSAGE_LIMIT = 2048
#: Environment variable that may hold the API key (``--api-key`` wins).
KEY_ENV = "OBLIX_SERVER_API_KEY"
#: The HTTP/1.1 implementations ``oblix server --http`` offers; ``auto`` is httptools when installed.
HTTP_IMPLEMENTATIONS = ("auto", "httptools", "h11")
#: Event loops ``oblix server --loop`` offers; ``auto`` is uvloop when installed.
LOOPS = ("auto", "uvloop", "asyncio")


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (``127.0.0.0/8``, ``::1``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@attrs.frozen(repr=False)
class ServerSettings:
    """What ``oblix server`` was started with. The key is never shown in a repr."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_concurrency: int = 16
    queue_size: int = 64
    queue_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_BODY_LIMIT
    store_all: bool = False
    #: Connection limits (``oblix_server.connections``): open connections at most, seconds to
    #: send the request headers, seconds (plus 1 s per ``body_min_rate`` bytes) to send the
    #: body, and seconds an idle keep-alive connection stays open.
    max_connections: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024
    keep_alive_timeout: float = 5.0
    #: Seconds a response may wait for a client that accepts no bytes (its write buffer full)
    #: before the connection is closed; largest request head in bytes (431 beyond it).
    send_timeout: float = 30.0
    max_header_bytes: int = DEFAULT_HEADER_LIMIT
    #: Messages one chat request may carry (413 beyond it).
    max_messages: int = DEFAULT_MESSAGE_LIMIT
    #: Host names (or addresses) requests may name in ``Host`` besides the loopback ones: what a
    #: reverse proxy forwards. Without an API key only these and loopback names are served.
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def check(self) -> None:
        """Refuse settings that would expose the models and sessions to the network unprotected."""
        for name, value in self.connection_limits().items():
            if not value > 0:
                raise ConfigError(f"The server setting {name} must be above 0, got {value!r}.")
        for name in self.allowed_hosts:
            if not name or any(c in name for c in "/:@ \\[]"):
                raise ConfigError(
                    f"--allowed-host takes a host name or address without a port or scheme, got {name!r}."
                )
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("The server API key is too short: use at least 8 characters.")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigError(
                f"Refusing to listen on {self.host} without an API key: anyone who can reach this "
                "machine could use your models and read your sessions. Pass --api-key (or set "
                f"${KEY_ENV}), or bind to 127.0.0.1."
            )

    def connection_limits(self) -> dict[str, float]:
        """The connection limits by name (what the log lines and the docs quote)."""
        names = (
            "max_connections",
            "header_timeout",
            "body_timeout",
            "body_min_rate",
            "keep_alive_timeout",
            "send_timeout",
            "max_header_bytes",
            "max_messages",
        )
        return {name: getattr(self, name) for name in names}

    def key_matches(self, offered: str) -> bool:
        """Constant-time comparison of an offered key with the configured one."""
        assert self.api_key is not None
        return hmac.compare_digest(offered.encode("utf-8"), self.api_key.encode("utf-8"))

    def __repr__(self) -> str:
        auth = "on" if self.api_key else "off"
        return f"<ServerSettings {self.host}:{self.port} auth={auth} max_concurrency={self.max_concurrency}>"
