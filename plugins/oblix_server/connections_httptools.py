"""The connection guard (:mod:`oblix_server.connections`) over uvicorn's httptools protocol.

httptools wraps llhttp, Node's HTTP parser in C: parsing a request and writing a response
cost a fraction of the pure-Python h11's, which matters on a server whose own work per
request is small. A separate module because httptools is optional (``--http h11`` works
without it).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from oblix_server.connections import GuardedProtocol


class GuardedHttpToolsProtocol(GuardedProtocol, HttpToolsProtocol):
    """uvicorn's httptools protocol, guarded; the phase follows the parser's callbacks.

    A request is in its body from its complete headers to its complete message; it is
    answered until its response is complete (a pipelined request waits behind it, as in
    uvicorn); otherwise the connection waits for request headers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_body = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_body = True

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False

    def _request_phase(self) -> str:
        if self._in_body:
            return "body"
        if self.cycle is not None and not self.cycle.response_complete:
            return "busy"
        return "headers"
