"""Secrets (API keys) Oblix has seen, so that no error text or stored metric shows them.

Backends hand the keys they resolve to :func:`remember`; every error message that leaves a
backend, the executor or the client goes through :func:`scrub`. Keys live only in memory.
"""

from __future__ import annotations

import threading

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

