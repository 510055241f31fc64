"""The connection guard: deadlines, a head-size bound and a send timeout per connection, a cap on
open connections. Built on public interfaces only: asyncio's protocol API and ``uvicorn.Config``.

uvicorn closes idle keep-alive connections but never a connection that has not finished
its request, so a client that sends its headers (or body) slowly, or never, holds a file
descriptor for ever; a few hundred of them exhaust the descriptor limit and the server
stops accepting anyone (slowloris). A client that stops reading its answer holds its
request (and its concurrency slot) for ever too: uvicorn waits for the socket to drain.

:class:`ConnectionGuard` is the protocol factory given to ``uvicorn.Config(http=...)``.
For each connection it makes a :class:`GuardedConnection`, an asyncio protocol that owns
uvicorn's own HTTP protocol (httptools or h11, as uvicorn names them in
``uvicorn.config.HTTP_PROTOCOLS``) and passes every event on to it unchanged. It sees
every byte that arrives and the transport's flow control, and the app tells it where the
request stands through :class:`TrackedApp` (the connection is found from the request's
task through the context variable :data:`CURRENT`, which uvicorn's request task inherits
from the ``data_received`` call that created it). Each connection has a phase:

* **headers** (from connect, or from the end of the previous response, until the app is
  called with the next request): ``header_timeout`` s, then a 408 (if part of a request
  came) and the connection is closed; a request head above ``max_header_bytes`` is a 431
  and closed, on every parser.
* **body** (the request has a body that the app has not read to its end): ``body_timeout`` s
  plus one second per ``body_min_rate`` bytes received, so a body that keeps arriving at
  the minimum rate is never cut; then the connection is closed (the app sees a disconnect).
* **busy** (the request is being answered): no deadline here; the app's own limits apply.

In every phase, a response whose client accepts no bytes (the write buffer stays above its
high-water mark, so uvicorn waits) for ``send_timeout`` s is ended: the connection is
closed, the app sees the client leave, and the request's slot is freed.

At most ``limit`` connections are open (see :func:`connection_limit`). A new one beyond it
takes the place of the connection that has waited longest for its request headers; when
every open connection is busy it is refused with a 503 and closed. Everything closed here
is logged as one warning line per kind, at most every :data:`LOG_INTERVAL` s, with counts.
At shutdown, connections still sending a body are closed at once instead of holding the
grace period (uvicorn asks each member of ``server_state.connections`` to shut down; the
guarded connection stands there in place of the protocol it owns).

What this relies on in uvicorn is checked by ``tests/test_server_uvicorn_canary.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oblix_server.disconnect import DISCONNECT_HOOK
from oblix_server.edges import host_refusal
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
#: The end of a request head.
HEAD_END = b"\r\n\r\n"
#: A request line with an absolute-form target (``GET http://name/path``): its authority, which
#: stands for the ``Host`` (RFC 9112 §3.2.2). Matched after a line feed anywhere in what arrives,
#: so a request pipelined behind another in one segment is seen too.
ABSOLUTE_TARGET = re.compile(rb"\n[\r\n]*[!#$%&'*+.^_`|~0-9a-z-]+ +https?://([^/?# \t\r\n]*)", re.IGNORECASE)
#: Bytes kept from one read for the next, so a request line split between reads is matched whole.
TARGET_TAIL = 1024

#: The connection whose request the current task serves (set while uvicorn's protocol reads,
#: so the request task uvicorn creates then inherits it).
CURRENT: ContextVar[GuardedConnection | None] = ContextVar("oblix_server_connection", default=None)

_MESSAGES = {
    "refused": "refused {n} new connection(s) with 503: {limit} connections are open and all are "
    "answering requests (--max-connections)",
    "evicted": "closed {n} connection(s) that had not sent a complete request, to make room for new "
    "ones ({limit} connections at most, --max-connections)",
    "headers": "closed {n} connection(s) that did not send complete request headers within "
    "{header_timeout:g} s (--header-timeout)",
    "head": "refused {n} request head(s) larger than {max_header_bytes} bytes with 431 (--max-header-bytes)",
    "host": "refused {n} request(s) with 403 whose absolute-form target names a host not served "
    "(--allowed-host)",
    "body": "closed {n} connection(s) whose request body arrived too slowly (--body-timeout "
    "{body_timeout:g} s, --body-min-rate {body_min_rate} bytes/s)",
    "send": "closed {n} connection(s) whose client accepted no bytes of the answer for "
    "{send_timeout:g} s (--send-timeout)",
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


def raw_response(status: int, reason: str, message: str, code: str, retry: bool = False) -> bytes:
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
        self.open: set[GuardedConnection] = set()
        #: Connections in the headers phase, in the order they entered it (a dict keeps order).
        self.waiting: dict[GuardedConnection, None] = {}
        self._pending: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def __getstate__(self) -> dict[str, Any]:
        """A table travels to worker processes empty (each process has its own connections)."""
        return {"settings": self.settings, "limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        ConnectionTable.__init__(self, state["settings"], state["limit"])

    def admit(self, connection: GuardedConnection) -> bool:
        """Whether ``connection`` may open: under the limit, or after closing the longest waiter."""
        if len(self.open) >= self.limit:
            if not self.waiting:
                self.note("refused")
                return False
            oldest = next(iter(self.waiting))
            self.remove(oldest)
            oldest.hang_up(None)
            self.note("evicted")
        self.open.add(connection)
        return True

    def remove(self, connection: GuardedConnection) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def set_waiting(self, connection: GuardedConnection, waiting: bool) -> None:
        self.waiting.pop(connection, None)
        if waiting and connection in self.open:
            self.waiting[connection] = None

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


class ConnectionGuard:
    """The protocol factory for ``uvicorn.Config(http=...)``: a :class:`GuardedConnection` per
    connection, over ``protocol`` (one of uvicorn's HTTP protocol classes). It pickles, so that
    uvicorn's worker processes each get their own (empty) table."""

    def __init__(self, settings: ServerSettings, protocol: type[asyncio.Protocol]) -> None:
        self.protocol = protocol
        self.table = ConnectionTable(settings, connection_limit(settings.max_connections))

    def __call__(self, **uvicorn_kwargs: Any) -> GuardedConnection:
        return GuardedConnection(self.table, self.protocol, uvicorn_kwargs)


class GuardedConnection(asyncio.Protocol):
    """One connection: uvicorn's protocol inside, a phase and a deadline around it (module docs)."""

    def __init__(
        self, table: ConnectionTable, protocol: type[asyncio.Protocol], kwargs: dict[str, Any]
    ) -> None:
        self.table = table
        self.settings = table.settings
        self._protocol = protocol
        self._kwargs = kwargs
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.phase = "new"
        self._phase_start = 0.0
        self._received = 0  # body bytes in the body phase
        self._head_bytes = 0  # bytes of the request head being read
        self._head_done = False
        self._tail = b""  # the last bytes of an unfinished head (its end may straddle two reads)
        #: The end of what arrived so far (absolute-form targets are looked for in it and what follows),
        #: or ``None`` when no ``Host`` is checked (a key and no --allowed-host).
        checked = table.settings.api_key is None or bool(table.settings.allowed_hosts)
        self._seen: bytes | None = b"\n" if checked else None
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._request = 0  # the id of the request the app is serving (0: none)
        self._lost = False
        self._on_lost: list[Callable[[], None]] = []

    # -- the asyncio protocol: everything goes on to uvicorn's --------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes
        self.loop = asyncio.get_running_loop()
        if not self.table.admit(self):
            message = "The server has too many open connections; retry in a moment."
            self.transport.write(
                raw_response(503, "Service Unavailable", message, "too_many_connections", True)
            )
            self.transport.close()
            return
        self.inner = self._protocol(**self._kwargs)
        self.inner.connection_made(transport)
        connections = self._kwargs["server_state"].connections  # uvicorn shuts these down
        connections.discard(self.inner)
        connections.add(self)
        self._enter("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_send_timer()
        if self.inner is None:  # refused
            return
        self._cancel_timer()
        self.table.remove(self)
        self._kwargs["server_state"].connections.discard(self)
        self.inner.connection_lost(exc)
        self._lost = True
        for callback in self._on_lost:
            callback()
        self._on_lost.clear()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:  # refused: closing
            return
        if self._seen is not None and not self._check_targets(data):
            return
        if self.phase == "body":
            self._received += len(data)
        elif not self._head_done and not self._count_head(data):
            return
        token = CURRENT.set(self)
        try:
            self.inner.data_received(data)
        finally:
            CURRENT.reset(token)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        """The client is not reading: the answer may wait ``send_timeout`` s for it."""
        self._cancel_send_timer()
        self._send_timer = self.loop.call_later(self.settings.send_timeout, self._send_expired)
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._cancel_send_timer()
        if self.inner is not None:
            self.inner.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: a body still arriving is not waited for (the app sees a
        disconnect)."""
        assert self.transport is not None and self.inner is not None
        if self.phase == "body" and not self.transport.is_closing():
            self.table.note("shutdown")
            self.hang_up(None)
            return
        self.inner.shutdown()  # type: ignore[attr-defined]

    # -- where the request stands (told by TrackedApp) ------------------------------------------

    def request_started(self, has_body: bool) -> int:
        """The app was called with a request; its id for the calls below."""
        self._request += 1
        self._enter("body" if has_body else "busy")
        return self._request

    def body_complete(self, request: int) -> None:
        if request == self._request and self.phase == "body":
            self._enter("busy")

    def request_ended(self, request: int) -> None:
        """The response is complete, or the app returned: the next request's headers are due."""
        if request == self._request and self.phase != "headers":
            self._enter("headers")

    def when_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when this connection is lost (now, if it is); a function that withdraws it."""
        if self._lost:
            callback()
            return _nothing
        self._on_lost.append(callback)
        return lambda: self._withdraw(callback)

    def _withdraw(self, callback: Callable[[], None]) -> None:
        if callback in self._on_lost:
            self._on_lost.remove(callback)

    # -- the request head -----------------------------------------------------------------------

    def _count_head(self, data: bytes) -> bool:
        """Count ``data`` into the head being read; ``False`` if that makes it too large (then refused)."""
        straddle = (self._tail + data[:3]).find(HEAD_END) if self._tail else -1
        end = straddle + 4 - len(self._tail) if straddle >= 0 else data.find(HEAD_END)
        if straddle < 0 and end >= 0:
            end += 4
        self._head_bytes += end if end >= 0 else len(data)
        if self._head_bytes > self.settings.max_header_bytes:
            self.table.note("head")
            limit = self.settings.max_header_bytes
            message = f"The request head (request line and headers) is larger than {limit} bytes."
            answer = raw_response(431, "Request Header Fields Too Large", message, "headers_too_large")
            self.hang_up(answer if self.phase == "headers" else None)  # never inside another answer
            return False
        if end >= 0:
            self._head_done, self._tail = True, b""
        else:
            self._tail = (self._tail + data)[-3:]
        return True

    def _check_targets(self, data: bytes) -> bool:
        """``False`` (and a 403) if ``data`` holds a request line whose absolute-form target names a
        host the server does not serve: its authority stands for the ``Host`` header, and
        httptools would serve the path whatever it names (h11 answers 404)."""
        assert self._seen is not None
        window = self._seen + data
        self._seen = window[-TARGET_TAIL:]
        if b"://" not in window:
            return True
        for match in ABSOLUTE_TARGET.finditer(window):
            authority = match.group(1).rpartition(b"@")[2].decode("latin-1")
            refused = host_refusal(self.settings, authority)
            if refused is not None:
                self.table.note("host")
                answer = raw_response(403, "Forbidden", refused.message, "host_not_allowed")
                self.hang_up(answer if self.phase == "headers" else None)  # never inside another answer
                return False
        return True

    # -- phases and deadlines -------------------------------------------------------------------

    def _enter(self, phase: str) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if phase == "busy" or self.phase == "new" or (phase == "headers" and self.phase == "body"):
            # what arrives next is the next request's head (also after a body the app never read)
            self._head_bytes, self._head_done, self._tail = 0, False, b""
        self.phase = phase
        self._phase_start = self.loop.time()
        self._received = 0
        self.table.set_waiting(self, phase == "headers")
        self._arm()

    def _deadline(self) -> float | None:
        if self.phase == "headers":
            return self._phase_start + self.settings.header_timeout
        if self.phase == "body":
            return (
                self._phase_start + self.settings.body_timeout + self._received / self.settings.body_min_rate
            )
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

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _expire(self) -> None:
        assert self.transport is not None
        self._timer = None
        deadline = self._deadline()
        if deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:  # more of the body came since the timer was set
            self._timer = self.loop.call_at(deadline, self._expire)
            return
        self.table.note(self.phase)
        self.table.remove(self)
        if self.phase == "headers" and self._head_bytes:
            message = f"The request headers did not arrive within {self.settings.header_timeout:g} s."
            self.hang_up(raw_response(408, "Request Timeout", message, "request_timeout"))
        else:
            self.hang_up(None)

    def _send_expired(self) -> None:
        self._send_timer = None
        self.table.note("send")
        self.hang_up(None)

    def hang_up(self, response: bytes | None) -> None:
        """Close the connection, after ``response`` if given; abort if the peer reads nothing."""
        assert self.transport is not None
        self._cancel_timer()
        if self.transport.is_closing():
            return
        if response is not None:
            self.transport.write(response)
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self.transport.abort()


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class TrackedApp:
    """The ASGI app in front of everything: tells the request's :class:`GuardedConnection` where the
    request stands, and offers its loss as the ASGI extension :data:`DISCONNECT_HOOK`.

    Under another server (no guarded connection) it only calls the app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = CURRENT.get()
        if connection is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = connection.request_started(_has_body(scope))
        scope.setdefault("extensions", {})[DISCONNECT_HOOK] = connection.when_lost

        async def tracked_receive() -> Message:
            message = await receive()
            if not message.get("more_body", False):
                connection.body_complete(request)
            return message

        async def tracked_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                connection.request_ended(request)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            connection.request_ended(request)
