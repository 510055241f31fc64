"""Who may drive the server, checked before any route reads a byte of the body.

* **Framing**: a request with both ``Content-Length`` and ``Transfer-Encoding`` is refused
  (400, connection closed; RFC 9112 §6.1), whatever the parser would make of it, so a
  body can never be read as a second request.
* **Host**: without an API key the server serves only its own machine: ``Host`` must be a
  loopback name or address (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``[::1]``) or
  one of ``--allowed-host`` (what a reverse proxy forwards); anything else is a 403, so a
  web page that rebinds a name it owns to 127.0.0.1 (DNS rebinding) is refused. With a key
  the key protects, and ``--allowed-host``, when given, still applies. A request with two
  ``Host`` headers is a 400 on every parser (RFC 9112 §3.2); the authority of an
  absolute-form target (``GET http://name/path``), which stands for the Host, is checked the
  same way by the connection guard (:mod:`oblix_server.connections`).
* **Origin**: a request from a browser page of another origin (``Origin`` not this
  server's own, or ``null``) is a 403 on every path but the dashboard's files: a page may
  not drive the API, whatever its content type.
* **Content type**: ``POST`` bodies must be JSON (``application/json`` or
  ``application/*+json``); anything else, or none, is a 415, so a cross-site form or
  ``text/plain`` post never reaches a model.

Host names are compared as written: no name is ever resolved.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from oblix_server.errors import APIError
from oblix_server.settings import ServerSettings
from oblix_server.ui import UI_PATHS

#: Methods whose requests carry a body that must be JSON.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(value: str) -> str | None:
    """The host of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``) in lower case, or ``None``."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        return host if bracket and (not rest or (rest[0] == ":" and rest[1:].isdigit())) else None
    host, colon, port = value.partition(":")
    if not host or (colon and not port.isdigit()) or any(c in host for c in "/@ \\"):
        return None
    return host


def is_loopback_name(host: str) -> bool:
    """Whether ``host`` (as :func:`host_name` gives it) names this machine without a lookup."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_refusal(settings: ServerSettings, headers: Headers) -> APIError | None:
    hosts = headers.getlist("host")
    if len(hosts) > 1:  # RFC 9112 §3.2: which one a proxy and the server would each take differs
        return APIError(
            400,
            f"The request has {len(hosts)} Host headers; send one (RFC 9112 §3.2).",
            code="ambiguous_host",
            headers={"Connection": "close"},
        )
    return host_refusal(settings, hosts[0] if hosts else "")


def host_refusal(settings: ServerSettings, raw: str) -> APIError | None:
    """The 403 for a request to the host ``raw`` (a ``Host`` value, or the authority of an
    absolute-form request target) when this server does not serve it, else ``None``."""
    allowed = {h.lower() for h in settings.allowed_hosts}
    if settings.api_key is not None and not allowed:
        return None
    host = host_name(raw)
    if host is not None and (is_loopback_name(host) or host in allowed):
        return None
    shown = f"The Host {raw!r}" if raw else "A request without a Host header"
    hint = f"pass --allowed-host {host}" if host else "pass --allowed-host NAME"
    return APIError(
        403,
        f"{shown} is not served here: without an API key, oblix server answers only requests to "
        f"this machine's loopback names (localhost, 127.0.0.1, [::1]). Behind a reverse proxy, {hint} "
        "(or set an API key).",
        code="host_not_allowed",
        headers={"Connection": "close"},
    )


def _origin_refusal(settings: ServerSettings, headers: Headers, path: str) -> APIError | None:
    origin = headers.get("origin")
    if origin is None or path in UI_PATHS:
        return None
    parts = urlsplit(origin.strip().lower())
    own = headers.get("host", "").strip().lower()
    if parts.netloc and (
        parts.netloc == own or parts.hostname in {h.lower() for h in settings.allowed_hosts}
    ):
        return None
    return APIError(
        403,
        f"Requests from web pages of another origin ({origin!r}) are refused: oblix server's API is "
        "for programs, and its own dashboard at /ui.",
        code="origin_not_allowed",
        headers={"Connection": "close"},
    )


def _content_type_refusal(method: str, headers: Headers) -> APIError | None:
    if method not in BODY_METHODS:
        return None
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if kind == "application" and (subtype == "json" or subtype.endswith("+json")):
        return None
    return APIError(
        415,
        f"The request body must be JSON: send 'Content-Type: application/json' (got {media or 'none'!r}).",
        code="unsupported_media_type",
        headers={"Connection": "close"},
    )


def framing_refusal(headers: Headers) -> APIError | None:
    """The 400 for a request that gives both ``Content-Length`` and ``Transfer-Encoding``."""
    if "content-length" in headers and "transfer-encoding" in headers:
        return APIError(
            400,
            "The request has both Content-Length and Transfer-Encoding; send one (RFC 9112 §6.1).",
            code="ambiguous_length",
            headers={"Connection": "close"},
        )
    return None


def edge_refusal(settings: ServerSettings, path: str, headers: Headers) -> APIError | None:
    """Why the request may not go on (framing, Host, Origin), or ``None``."""
    return (
        framing_refusal(headers)
        or _host_refusal(settings, headers)
        or _origin_refusal(settings, headers, path)
    )


def body_refusal(method: str, headers: Headers) -> APIError | None:
    """Why the request's body may not be read (not JSON), or ``None``; checked after the key."""
    return _content_type_refusal(method, headers)
