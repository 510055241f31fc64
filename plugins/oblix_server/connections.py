"""Connection limits below the app: deadlines for headers and body, a cap on open connections.

uvicorn closes idle keep-alive connections but never a connection that has not finished
its request, so a client that sends its headers (or body) slowly, or never, holds a file
descriptor for ever; a few hundred of them exhaust the descriptor limit and the server
stops accepting anyone (slowloris). :class:`GuardedProtocol`, mixed into uvicorn's httptools
protocol (:mod:`oblix_server.connections_httptools`, the default) or its h11 protocol
(:class:`GuardedH11Protocol`, ``--http h11``), gives every connection a phase and a deadline:

* **headers** (from connect, or from the end of the previous response, until the request
  headers are complete): ``header_timeout`` s, then a 408 (if part of a request came) and
  the connection is closed. Idle keep-alive connections are closed by uvicorn after
  ``keep_alive_timeout`` s.
* **body**: ``body_timeout`` s plus one second per ``body_min_rate`` bytes received, so a
  body that keeps arriving at the minimum rate is never cut; then the connection is closed
  (the app sees a disconnect).
* **busy** (the request is being answered): no deadline here; the app's own limits apply.

At most ``limit`` connections are open (see :func:`connection_limit`). A new one beyond it
takes the place of the connection that has waited longest for its request headers; when
every open connection is busy it is refused with a 503 and closed. Everything closed here
is logged as one warning line per kind, at most every :data:`LOG_INTERVAL` s, with counts.
At shutdown, connections still sending a body are closed at once instead of holding the
grace period.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from oblix_server.disconnect import DISCONNECT_HOOK
from oblix_server.settings import ServerSettings

log = logging.getLogger("oblix_server")

#: The listen backlog, which is also how many connections asyncio accepts in one go.
BACKLOG = 64
#: Descriptors kept free for the server's own files and sockets (store, upstream models, logs).
OWN_DESCRIPTORS = 64
#: Descriptors kept free for connections accepted or closed but not yet handed over: asyncio
#: accepts up to BACKLOG per loop pass, and a connection reaches the protocol (which may close
#: it) two passes later, its descriptor freed one pass after that.
IN_PASSING = 4 * BACKLOG
#: Seconds between two log lines about closed or refused connections.
LOG_INTERVAL = 10.0

_MESSAGES = {
    "refused": "refused {n} new connection(s) with 503: {limit} connections are open and all are "
    "answering requests (--max-connections)",
    "evicted": "closed {n} connection(s) that had not sent a complete request, to make room for new "
    "ones ({limit} connections at most, --max-connections)",
    "headers": "closed {n} connection(s) that did not send complete request headers within "
    "{header_timeout:g} s (--header-timeout)",
    "body": "closed {n} connection(s) whose request body arrived too slowly (--body-timeout "
    "{body_timeout:g} s, --body-min-rate {body_min_rate} bytes/s)",
    "shutdown": "closed {n} connection(s) still sending a request body at shutdown",
}


def connection_limit(configured: int) -> int:
    """``configured``, lowered so that the open connections never exhaust the descriptor limit.

    Connections in passing (:data:`IN_PASSING`) and the server's own descriptors
    (:data:`OWN_DESCRIPTORS`) must fit too: the cap is at most ``ulimit -n - 320`` (and at
    least 1); with the usual limit of 1,024 the default of 512 stands.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - IN_PASSING - OWN_DESCRIPTORS))


def _nothing() -> None:
    pass


class CoalescedWrites:
    """A response's view of the transport: what it writes in one turn of the event loop goes
    out in one ``send()``.

    uvicorn writes the status line and headers, then each body part, each with its own
    ``send()``, and each ``send()`` wakes the client; an answer that is ready at once
    (a whole answer, or the events of a stream that arrive together) is thus one write.
    The parts are sent at the loop's next turn, or before the transport closes.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _raw_response(status: int, reason: str, message: str, code: str, retry: bool = False) -> bytes:
    """A whole HTTP/1.1 response (OpenAI-style JSON error, ``Connection: close``), as bytes."""
    kind = "service_unavailable" if status == 503 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionTable:
    """The open connections of one server, the ones waiting for headers (oldest first), the notices."""

    def __init__(self, settings: ServerSettings, limit: int) -> None:
        self.settings = settings
        self.limit = limit
        self.open: set[GuardedProtocol] = set()
        #: Connections in the headers phase, in the order they entered it (a dict keeps order).
        self.waiting: dict[GuardedProtocol, None] = {}
        self._pending: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def admit(self, protocol: GuardedProtocol) -> bool:
        """Whether ``protocol`` may open: under the limit, or after closing the longest waiter."""
        if len(self.open) >= self.limit:
            if not self.waiting:
                self.note("refused")
                return False
            oldest = next(iter(self.waiting))
            self.remove(oldest)
            oldest.hang_up(None)
            self.note("evicted")
        self.open.add(protocol)
        return True

    def remove(self, protocol: GuardedProtocol) -> None:
        self.open.discard(protocol)
        self.waiting.pop(protocol, None)

    def set_waiting(self, protocol: GuardedProtocol, waiting: bool) -> None:
        self.waiting.pop(protocol, None)
        if waiting and protocol in self.open:
            self.waiting[protocol] = None

    def note(self, kind: str) -> None:
        """Count one closed or refused connection; log now if nothing was logged lately."""
        self._pending[kind] += 1
        if self._flush is None:
            self.flush()

    def flush(self) -> None:
        """Log the pending counts, one line per kind; again in :data:`LOG_INTERVAL` s if any."""
        self._flush = None
        if not self._pending:
            return
        values: dict[str, Any] = {"limit": self.limit, **self.settings.connection_limits()}
        for kind, count in sorted(self._pending.items()):
            log.warning("oblix server: " + _MESSAGES[kind].format(n=count, **values))
        self._pending.clear()
        self._flush = asyncio.get_running_loop().call_later(LOG_INTERVAL, self.flush)


class GuardedProtocol:
    """A phase and a deadline per connection (see the module docs), over one of uvicorn's protocols.

    Mixed in before :class:`H11Protocol` or :class:`HttpToolsProtocol`; a subclass says which
    phase its request is in (:meth:`_request_phase`). A subclass made by
    :func:`oblix_server.protocols.protocol_class` carries the server's :class:`ConnectionTable`.
    """

    table: ClassVar[ConnectionTable]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._phase = "new"
        self._phase_start = 0.0
        self._received = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._on_lost: list[Callable[[], None]] = []

    def _request_phase(self) -> str:
        """``headers`` (waiting for a request's headers), ``body`` (receiving its body) or ``busy``."""
        raise NotImplementedError

    # -- the asyncio protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.table.admit(self):
            self._refused = True
            message = "The server has too many open connections; retry in a moment."
            writer = cast(asyncio.WriteTransport, transport)  # uvloop's are not asyncio's classes
            writer.write(_raw_response(503, "Service Unavailable", message, "too_many_connections", True))
            writer.close()
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._update_phase()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_timer()
        self.table.remove(self)
        super().connection_lost(exc)  # type: ignore[misc]
        self._lost = True
        for callback in self._on_lost:
            callback()
        self._on_lost.clear()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)  # type: ignore[misc]
        self._update_phase()
        self._prepare_cycle()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._update_phase()
        self._prepare_cycle()

    # -- each request: coalesced writes, the disconnect hook ----------------------------------

    def _prepare_cycle(self) -> None:
        """For a request just read (its task has not run yet): its response's writes coalesced,
        and :data:`DISCONNECT_HOOK` in its scope."""
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete or isinstance(cycle.transport, CoalescedWrites):
            return
        cycle.transport = CoalescedWrites(self.transport, self.loop)
        cycle.scope.setdefault("extensions", {})[DISCONNECT_HOOK] = self._when_lost

    def _flush(self) -> None:
        """Send what the current response wrote this turn, before the transport itself is closed."""
        cycle = getattr(self, "cycle", None)
        if cycle is not None and isinstance(cycle.transport, CoalescedWrites):
            cycle.transport.flush()

    def _when_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when this connection is lost (now, if it is); a function that withdraws it."""
        if self._lost:
            callback()
            return _nothing
        self._on_lost.append(callback)
        return lambda: self._withdraw(callback)

    def _withdraw(self, callback: Callable[[], None]) -> None:
        if callback in self._on_lost:
            self._on_lost.remove(callback)

    def shutdown(self) -> None:
        """Graceful shutdown: a body still arriving is not waited for (the app sees a disconnect)."""
        if self._phase == "body" and not self.transport.is_closing():
            self.table.note("shutdown")
            self.hang_up(None)
            return
        self._flush()
        super().shutdown()  # type: ignore[misc]

    # -- phases and deadlines -----------------------------------------------------------------

    def _update_phase(self) -> None:
        if self.transport.is_closing():
            return
        phase = self._request_phase()
        if phase == self._phase:
            return
        self._phase = phase
        self._phase_start = self.loop.time()
        self._received = 0
        self.table.set_waiting(self, phase == "headers")
        self._arm()

    def _deadline(self) -> float | None:
        settings = self.table.settings
        if self._phase == "headers":
            return self._phase_start + settings.header_timeout
        if self._phase == "body":
            return self._phase_start + settings.body_timeout + self._received / settings.body_min_rate
        return None

    def _arm(self) -> None:
        self._cancel_timer()
        deadline = self._deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:  # more of the body came since the timer was set
            self._timer = self.loop.call_at(deadline, self._expire)
            return
        self.table.note(self._phase)
        self.table.remove(self)
        if self._phase == "headers" and self._received:
            message = f"The request headers did not arrive within {self.table.settings.header_timeout:g} s."
            self.hang_up(_raw_response(408, "Request Timeout", message, "request_timeout"))
        else:
            self.hang_up(None)

    def hang_up(self, response: bytes | None) -> None:
        """Close the connection, after ``response`` if given; abort if the peer reads nothing."""
        self._cancel_timer()
        if self.transport.is_closing():
            return
        self._flush()
        if response is not None:
            self.transport.write(response)
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self.transport.abort()


class GuardedH11Protocol(GuardedProtocol, H11Protocol):
    """uvicorn's pure-Python h11 protocol, guarded; the phase is h11's state of the client."""

    def _request_phase(self) -> str:
        state = self.conn.their_state
        return "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "busy"
