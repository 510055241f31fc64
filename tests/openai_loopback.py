"""A loopback OpenAI-compatible HTTP server that counts requests and misbehaves on demand.

Not a model: it answers every chat completion with the same short streamed text. It
exists to put the real ``openai`` client (and so Oblix's OpenAI backend) in front of
failures a real endpoint has -- ``mode``:

* ``"ok"``        -- a normal streamed answer (SSE chunks, a ``finish_reason``, ``[DONE]``);
* ``"500"``, ``"503"``, ``"400"``, ``"429"`` -- that HTTP status with an OpenAI error body;
* ``"blackhole"`` -- reads the request and never answers (until the server stops);
* ``"truncated"`` -- content chunks, then the connection closes without a finish reason;
* ``"empty"``     -- a finish reason and ``[DONE]`` but no content;
* ``"html"``      -- a 200 HTML page instead of an event stream;
* ``"echo401"``   -- a 401 whose body echoes the request's bearer key;
* ``"kill"``      -- one content chunk, then the socket is reset;
* ``"tool"``      -- calls the request's first tool (``{"city": "Paris"}``, streamed in two
  argument pieces, finish reason ``tool_calls``) unless the conversation already holds a
  tool result, which it answers with text.

:meth:`stop` closes the listening socket, so the port refuses connections (a dead
server); :meth:`start` listens on the same port again (recovery). ``GET /v1/models``
answers from ``models_script`` (statuses popped one per request, then ``models_status``),
so health checks can be made to flap; ``model_entry`` adds fields to its one model entry (e.g.
``{"max_model_len": 4096}``). With ``context_limit`` set, a chat request whose messages hold
more than that many tokens (4 characters each) is refused with HTTP 400 and the message
llama-cpp-python's server gives ("This model's maximum context length is N tokens...").
With ``report_usage`` set, a request asking for ``stream_options.include_usage`` gets a
last usage chunk (``prompt_tokens``: the messages' characters / 4, ``completion_tokens``:
the answer's words), with ``prompt_tokens_details.cached_tokens`` when ``cached_tokens``
is set (as OpenAI reports a prompt-cache hit).
``chat_requests``/``models_requests`` count what
arrived and ``bodies`` holds the chat requests' JSON. Use it started/stopped by hand or
as a context manager.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.net import LoopbackHTTPServer, free_port


class LoopbackOpenAI(LoopbackHTTPServer):
    """See the module docstring."""

    owner_attribute = "server_owner"

    def __init__(
        self, mode: str = "ok", port: int | None = None, answer: str = "Hello from loopback"
    ) -> None:
        super().__init__()
        self.mode = mode
        self.port = port or free_port()
        self.answer = answer
        self.models_status = 200
        self.models_script: list[int] = []
        self.model_entry: dict[str, Any] = {}
        self.context_limit: int | None = None
        self.report_usage = False
        self.cached_tokens: int | None = None
        self.chat_requests = 0
        self.models_requests = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _count(self, what: str) -> int | None:
        with self._lock:
            if what == "models":
                self.models_requests += 1
                return self.models_script.pop(0) if self.models_script else self.models_status
            self.chat_requests += 1
            return None


class _Handler(BaseHTTPRequestHandler):
    server_owner: LoopbackOpenAI

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self.path.rstrip("/").endswith("/models"):
            self._json(404, {"error": {"message": "not found"}})
            return
        status = self.server_owner._count("models") or 200
        if status == 200:
            entry = {"id": "loopback", "object": "model"} | self.server_owner.model_entry
            self._json(200, {"object": "list", "data": [entry]})
        else:
            self._json(status, {"error": {"message": f"scripted {status}"}})

    def do_POST(self) -> None:
        owner = self.server_owner
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        owner._count("chat")
        owner.bodies.append(body)
        mode = owner.mode
        tokens = sum(len(m.get("content") or "") for m in body.get("messages", [])) // 4
        if owner.context_limit is not None and tokens > owner.context_limit:
            message = (
                f"This model's maximum context length is {owner.context_limit} tokens. However, you "
                f"requested {tokens} tokens ({tokens} in the messages, None in the completion)."
            )
            self._json(400, {"error": {"message": message, "code": "context_length_exceeded"}})
        elif mode == "blackhole":
            owner._release.wait()
        elif mode == "html":
            self._send(200, "text/html", b"<html><body>Welcome to nginx!</body></html>")
        elif mode == "echo401":
            key = self.headers.get("Authorization", "")
            self._json(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "auth"}})
        elif mode.isdigit():
            self._json(int(mode), {"error": {"message": f"scripted {mode}", "type": "server_error"}})
        elif mode == "tool" and not any(m.get("role") == "tool" for m in body.get("messages", [])):
            self._tool_call(body.get("model", "loopback"), body["tools"][0]["function"]["name"])
        else:
            self._stream(body.get("model", "loopback"), mode, tokens, body.get("stream_options") or {})

    def _stream(
        self, model: str, mode: str, prompt_tokens: int = 0, options: dict[str, Any] | None = None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        words = [] if mode == "empty" else self.server_owner.answer.split(" ")
        for i, word in enumerate(words):
            text = word if i == 0 else f" {word}"
            self._event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}, model)
            if mode == "kill":  # reset the connection (RST) mid-answer
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
        if mode != "truncated":
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, model)
            if self.server_owner.report_usage and (options or {}).get("include_usage"):
                self._event({"choices": [], "usage": self._usage(prompt_tokens, len(words))}, model)
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        usage["total_tokens"] = prompt_tokens + completion_tokens
        if self.server_owner.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.server_owner.cached_tokens}
        return usage

    def _tool_call(self, model: str, name: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}
        pieces = [call, {"index": 0, "function": {"arguments": '{"city": '}}]
        pieces.append({"index": 0, "function": {"arguments": '"Paris"}'}})
        for piece in pieces:
            delta = {"role": "assistant", "content": None, "tool_calls": [piece]}
            self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}, model)
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}, model)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _event(self, payload: dict[str, Any], model: str) -> None:
        event = {"id": "chatcmpl-loopback", "object": "chat.completion.chunk", "created": 0, "model": model}
        self.wfile.write(b"data: " + json.dumps(event | payload).encode() + b"\n\n")
        self.wfile.flush()


LoopbackOpenAI.handler = _Handler
