"""Hostile OpenAI-compatible endpoints on loopback, for fault tests.

A *test double* of a misbehaving server (no real server misbehaves on demand): it
speaks enough of the chat-completions streaming protocol for the official ``openai``
client, then misbehaves as told. Every request is counted.

Modes: ``ok`` (a proper stream), ``truncated`` (content chunks, then the connection
closes without a finish reason or ``[DONE]``), ``empty`` (a finish reason and
``[DONE]`` but no content), ``html`` (a 200 HTML page), ``silent`` (accepts TCP and
never answers), ``echo401`` (a 401 whose body echoes the request's bearer key), ``kill``
(one content chunk, then the socket is reset).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _event(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-loopback",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "loopback",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._send(200, "application/json", json.dumps({"object": "list", "data": []}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.count(body)
        mode = self.server.mode
        if mode == "silent":
            time.sleep(self.server.silence)
            return
        if mode == "html":
            self._send(200, "text/html", b"<html><body>Welcome to nginx!</body></html>")
        elif mode == "echo401":
            key = self.headers.get("Authorization", "")
            error = {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request"}}
            self._send(401, "application/json", json.dumps(error).encode())
        else:
            self._stream(mode)

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, mode: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == "empty":
            self.wfile.write(_event(finish="stop") + b"data: [DONE]\n\n")
            return
        self.wfile.write(_event("Hello"))
        self.wfile.flush()
        if mode == "kill":
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()
            return
        self.wfile.write(_event(" world"))
        if mode == "ok":
            self.wfile.write(_event(finish="stop") + b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


class LoopbackServer(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint on 127.0.0.1 that misbehaves according to ``mode``."""

    daemon_threads = True

    def __init__(self, mode: str = "ok", silence: float = 60.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.silence = silence
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def count(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
