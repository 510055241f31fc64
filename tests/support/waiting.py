"""Polling for a condition (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``check`` until it is true or ``timeout`` s passed; whether it became true.

    Use as ``assert wait_until(lambda: ..., 5)`` so that a timeout fails the test.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())
