"""A hostile OpenAI-compatible loopback endpoint: the real ``openai`` client talks to it.

Not a model (a test double standing in for a misbehaving provider). Every chat completion is
streamed as SSE, in one of these ``mode``\\ s:

* ``"ok"``      -- ``words`` words, a ``finish_reason``, a usage chunk (``usage``: whatever JSON
  values the test sets, hostile ones included), ``[DONE]``;
* ``"endless"`` -- ``chunk`` characters per event, without end (until the client hangs up);
* ``"slow"``    -- like ``"ok"``, with ``pause`` seconds before each word;
* ``"429"``     -- HTTP 429 with ``Retry-After: retry_after`` and an OpenAI error body.

``chat_requests`` counts the chat requests, ``sent_events`` the events written and ``hung_up``
the streams the client closed before their end.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.net import LoopbackHTTPServer, free_port


class HostileOpenAI(LoopbackHTTPServer):
    """See the module docstring."""

    owner_attribute = "owner"

    def __init__(self, mode: str = "ok", words: int = 50) -> None:
        super().__init__()
        self.port = free_port()
        self.mode = mode
        self.words = words
        self.usage: dict[str, Any] = {"prompt_tokens": 100, "completion_tokens": words}
        self.chunk = 1000
        self.pause = 0.0
        self.retry_after = "0.05"
        self.chat_requests = 0
        self.sent_events = 0
        self.hung_up = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> HostileOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def counted(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


class _Handler(BaseHTTPRequestHandler):
    owner: HostileOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:  # /v1/models: one model, no window
        body = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        owner = self.owner
        owner.counted("chat_requests")
        if owner.mode == "429":
            body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", owner.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self._stream(owner)
        except OSError:  # the client hung up
            owner.counted("hung_up")

    def _stream(self, owner: HostileOpenAI) -> None:
        if owner.mode == "endless":
            while not owner._release.is_set():
                self._event({"choices": [{"index": 0, "delta": {"content": "x" * owner.chunk}}]})
            return
        for i in range(owner.words):
            if owner.pause:
                time.sleep(owner.pause)
            self._event({"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]})
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._event({"choices": [], "usage": owner.usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, payload: dict[str, Any]) -> None:
        event = {
            "id": "chatcmpl-hostile",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
        }
        self.wfile.write(b"data: " + json.dumps(event | payload).encode() + b"\n\n")
        self.wfile.flush()
        self.owner.counted("sent_events")


HostileOpenAI.handler = _Handler
