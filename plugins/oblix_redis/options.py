"""The redis store's options: parsing, validation and a printable (password-free) URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from oblix.plugin import ConfigError, parse_flag

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "oblix:"
SCHEMES = ("redis", "rediss", "unix")
_SECRET_QUERY = {"password", "pass", "auth"}


def redact_url(url: str) -> str:
    """``url`` with any password (user-info or query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        # user:password or :password keeps the user; a lone user-info may be a password
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY else v) for k, v in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret strings inside ``url`` (to scrub from any text before it is shown)."""
    parts = urlsplit(url)
    found = [p for p in (parts.password, parts.username if parts.password is None else None) if p]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY and v]
    return [s for s in found if len(s) >= 3]


def _as_bool(value: Any, name: str) -> bool:
    """``parse_flag``'s rule (an unclear value is refused); an empty value is the default, false."""
    if isinstance(value, str) and not value.strip():
        return False
    return parse_flag(value, f"The redis store option {name!r}", ConfigError)


def _as_ttl(value: Any) -> int | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return None
    try:
        seconds = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds >= 1 or seconds != int(seconds):
        raise ConfigError(
            f"The redis store option 'ttl' must be a whole number of seconds >= 1 (or none), got {value!r}."
        )
    return int(seconds)


def _as_timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(f"The redis store option 'timeout' must be a number of seconds > 0, got {value!r}.")
    return seconds


def _as_number(value: Any, name: str, low: float, whole: bool = False) -> float:
    """``value`` as a number >= ``low`` (a whole one with ``whole``), else a ConfigError naming it."""
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not number >= low or number == float("inf") or (whole and number != int(number)):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"The redis store option {name!r} must be {kind} >= {low:g}, got {value!r}.")
    return number


@attrs.frozen
class RedisOptions:
    """Validated options of a redis store."""

    url: str = attrs.field(repr=False)
    prefix: str
    cluster: bool
    ttl: int | None
    timeout: float
    retry_window: float = 10.0
    wait_replicas: int = 0
    wait_timeout: int = 1000

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @classmethod
    def parse(
        cls,
        url: Any = None,
        prefix: Any = None,
        cluster: Any = False,
        ttl: Any = None,
        timeout: Any = 5.0,
        retry_window: Any = 10.0,
        wait_replicas: Any = 0,
        wait_timeout: Any = 1000,
    ) -> RedisOptions:
        url = DEFAULT_URL if url is None or url == "" else url
        if not isinstance(url, str):
            raise ConfigError(f"The redis store option 'url' must be a string, got {type(url).__name__}.")
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme not in SCHEMES:
            raise ConfigError(
                f"The redis store url {redact_url(url)!r} must start with redis://, rediss:// or unix:// "
                f"(default {DEFAULT_URL})."
            )
        prefix = DEFAULT_PREFIX if prefix is None else prefix
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"The redis store option 'prefix' must be a non-empty string without '{{' or '}}' "
                f"(it precedes the hash tag of each key), got {prefix!r}."
            )
        is_cluster = _as_bool(cluster, "cluster")
        if is_cluster and scheme == "unix":
            raise ConfigError("A Redis Cluster is reached over redis:// or rediss://, not a unix socket.")
        if is_cluster and urlsplit(url).path.strip("/") not in ("", "0"):
            raise ConfigError("Redis Cluster has only database 0: drop the /<db> part of the url.")
        return cls(
            url,
            prefix,
            is_cluster,
            _as_ttl(ttl),
            _as_timeout(timeout),
            _as_number(retry_window, "retry_window", 0),
            int(_as_number(wait_replicas, "wait_replicas", 0, whole=True)),
            int(_as_number(wait_timeout, "wait_timeout", 1, whole=True)),
        )


def check_option_names(options: dict[str, Any]) -> None:
    """Raise a :class:`ConfigError` naming every accepted option when one of ``options`` is not one."""
    accepted = sorted(attrs.fields_dict(RedisOptions))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) for the 'redis' session store: {', '.join(unknown)}. "
            f"Accepted: {', '.join(accepted)}."
        )
