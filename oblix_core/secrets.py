"""Secrets (API keys) Oblix has seen, so that no error text or stored metric shows them.

Backends hand the keys they resolve to :func:`remember`; every error message that leaves a
backend, the executor or the client goes through :func:`scrub`. Keys live only in memory.
"""

from __future__ import annotations

import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What a secret is replaced with.
MASK = "***"
#: Shorter strings are not treated as secrets (they would mask ordinary words).
MIN_LENGTH = 6

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def remember(secret: str | None) -> None:
    """Add ``secret`` to the strings :func:`scrub` masks (ignored if too short to be a key)."""
    global _secrets
    if not secret or len(secret) < MIN_LENGTH:
        return
    with _lock:
        if secret not in _secrets:
            _secrets = tuple(sorted({*_secrets, secret}, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every remembered secret replaced by :data:`MASK`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


#: Query parameters whose values are treated as secrets in endpoint URLs.
SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "signature", "auth", "sig")


def redact_url(url: str) -> str:
    """``url`` without secrets: the userinfo password and secret-looking query values masked.

    Every secret removed is also remembered, so error texts that quote the URL are
    scrubbed too.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if parts.password:
        remember(parts.password)
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@")
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if any(word in name.lower() for word in SECRET_PARAMS):
            remember(value)
            value = MASK
        query.append((name, value))
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
