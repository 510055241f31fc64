"""Limits: requests in flight (with a bounded wait queue) and the size of a request body."""

from __future__ import annotations

import math

import anyio
from starlette.requests import Request

from oblix_server.errors import APIError


class ConcurrencyLimiter:
    """At most ``max_in_flight`` requests run; up to ``queue_size`` more wait up to ``queue_timeout`` s.

    A request that finds the queue full, or waits longer than ``queue_timeout``, gets
    429 with ``Retry-After``. Used from the event loop only (no locking needed: the
    counters change between awaits).
    """

    def __init__(self, max_in_flight: int, queue_size: int, queue_timeout: float) -> None:
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._slots = anyio.Semaphore(max_in_flight)
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        return self.max_in_flight - self._slots.value

    def _too_many(self, why: str) -> APIError:
        retry = max(1, math.ceil(self.queue_timeout / 2))
        return APIError(
            429,
            f"The server is busy ({self.in_flight} requests in flight, {self.waiting} waiting): {why}. "
            f"Retry after {retry} s.",
            code="server_busy",
            headers={"Retry-After": str(retry)},
        )

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; raises a 429 :class:`APIError`."""
        try:
            self._slots.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        if self.waiting >= self.queue_size:
            raise self._too_many(f"the wait queue ({self.queue_size}) is full")
        self.waiting += 1
        try:
            with anyio.move_on_after(self.queue_timeout):
                await self._slots.acquire()
                return
        finally:
            self.waiting -= 1
        raise self._too_many(f"no slot freed within {self.queue_timeout:g} s")

    def release(self) -> None:
        self._slots.release()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 :class:`APIError` once it exceeds ``limit`` bytes.

    A 413 closes the connection (the rest of the body is not read); a client that left,
    or was cut off for sending too slowly, is a 408 that nobody reads.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    more = True
    while more:  # the ASGI messages themselves: Request.stream() adds a generator per request
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            left = "The connection closed before the whole body arrived."
            raise APIError(408, left, code="request_timeout")
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        more = message.get("more_body", False)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than the server's limit of {limit} bytes; send a shorter "
        "conversation (or raise --max-body-bytes).",
        code="request_too_large",
        headers={"Connection": "close"},
    )
