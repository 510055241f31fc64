"""A loopback test double of Anthropic's Messages API (no real Anthropic endpoint is reachable here).

Not a model and not Anthropic: it answers every request with the same short text,
streamed word by word (one word counts as one output token). It exists to put the
official ``anthropic`` SDK (and so Oblix's Claude backend) in front of the wire format
and the failures of the real API, as documented by Anthropic:

* ``POST /v1/messages`` with ``stream: true`` answers with the SSE sequence
  ``message_start``, ``ping``, ``content_block_start``, ``content_block_delta``...,
  ``content_block_stop``, ``message_delta`` (stop reason, usage), ``message_stop``;
  without ``stream`` it answers with the whole message.
* It checks what the real API refuses with a 400 ``invalid_request_error``: no
  ``max_tokens``, a ``system`` role inside ``messages``, turns that do not alternate
  or do not start with ``user``, empty text blocks, a temperature above 1, more than
  four ``cache_control`` breakpoints; and the key (``x-api-key``, or ``Authorization:
  Bearer`` as recent SDKs send it) when ``api_key`` is set (401).
* Prompt caching is simulated after Anthropic's description: a prefix up to a
  ``cache_control`` breakpoint is written when it holds at least ``min_cache_tokens``
  (estimated 4 characters a token); a later request whose blocks start with a written
  prefix (looked up from each breakpoint back over up to 20 blocks) reads it. The usage
  reports ``cache_read_input_tokens``, ``cache_creation_input_tokens`` and the rest as
  ``input_tokens``.

``mode`` (what the next requests get): ``"ok"``; ``"tool"`` (calls the request's first
tool with ``{"city": "Paris"}`` in two ``input_json_delta`` pieces, unless the last user
turn holds a ``tool_result``); ``"max_tokens"`` (stops at ``max_tokens`` words with that
stop reason); ``"truncated"`` (text, then the connection closes without
``message_stop``); ``"error_event"`` (one word, then an ``error`` event of
``overloaded_error``); ``"blackhole"`` (never answers); ``"kill"`` (one word, then a
connection reset). ``script`` holds ``(status, headers)`` answers popped one per request
before ``mode`` applies (e.g. ``(429, {"retry-after": "1"})``, ``(529, {})``).
``GET /v1/models`` answers ``models_status``. ``bodies`` and ``headers`` keep what arrived.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.net import LoopbackHTTPServer, free_port

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class AnthropicDouble(LoopbackHTTPServer):
    """See the module docstring. Start and stop by hand or use as a context manager."""

    owner_attribute = "double"

    def __init__(
        self,
        mode: str = "ok",
        *,
        api_key: str | None = None,
        answer: str = "Paris is the capital of France",
        min_cache_tokens: int = 1024,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.api_key = api_key
        self.answer = answer
        self.min_cache_tokens = min_cache_tokens
        self.port = port or free_port()
        self.script: list[tuple[int, dict[str, str]]] = []
        self.models_status = 200
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models_requests = 0
        self.cache: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The API base URL (the SDK adds ``/v1/messages``)."""
        return f"http://127.0.0.1:{self.port}"

    def next_scripted(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            return self.script.pop(0) if self.script else None

    def cache_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """The request's usage split into cache reads, cache writes and the rest."""
        blocks = _flat_blocks(body)
        total = sum(_tokens(b) for b in blocks)
        marks = [i for i, b in enumerate(blocks) if "cache_control" in b]
        with self._lock:
            hit = -1
            for mark in marks:
                for j in range(mark, max(-1, mark - 21), -1):
                    if _key(body, blocks[: j + 1]) in self.cache:
                        hit = max(hit, j)
                        break
            read = sum(_tokens(b) for b in blocks[: hit + 1])
            written = read
            for mark in (m for m in marks if m > hit):
                size = sum(_tokens(b) for b in blocks[: mark + 1])
                if size >= self.min_cache_tokens:
                    self.cache[_key(body, blocks[: mark + 1])] = size
                    written = max(written, size)
        return {
            "input_tokens": total - written,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written - read,
        }


def _flat_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Tools, system and message blocks in the order the cache sees them."""
    blocks = [dict(t) for t in body.get("tools") or []]
    system = body.get("system") or []
    blocks += [{"type": "text", "text": system}] if isinstance(system, str) else [dict(b) for b in system]
    for turn in body.get("messages", []):
        content = turn["content"]
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks += [dict(b, role=turn["role"]) for b in content]
    return blocks


def _key(body: dict[str, Any], blocks: list[dict[str, Any]]) -> str:
    clean = [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks]
    return json.dumps([body.get("model"), clean], sort_keys=True)


def _tokens(block: dict[str, Any]) -> int:
    text = block.get("text") or json.dumps({k: v for k, v in block.items() if k != "cache_control"})
    return max(1, len(str(text)) // 4)


def invalid(body: dict[str, Any]) -> str | None:
    """What the real API would refuse in ``body`` (a 400), or ``None``."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if isinstance(body.get("temperature"), int | float) and not 0 <= body["temperature"] <= 1:
        return "temperature: Input should be less than or equal to 1"
    turns = body.get("messages") or []
    if not turns or turns[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    for i, turn in enumerate(turns):
        if turn.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and turn["role"] == turns[i - 1]["role"]:
            return 'messages: roles must alternate between "user" and "assistant"'
        content = turn.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if not blocks or any(b.get("type") == "text" and not b.get("text") for b in blocks):
            return f"messages.{i}: text content blocks must be non-empty"
    if sum("cache_control" in b for b in _flat_blocks(body)) > 4:
        return "A maximum of 4 blocks with cache_control may be provided."
    return None


class _Handler(BaseHTTPRequestHandler):
    double: AnthropicDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_double")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = ERROR_TYPES.get(status, "api_error")
        self._json(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _authorised(self) -> bool:
        expected = self.double.api_key
        bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        if expected is not None and expected not in (self.headers.get("x-api-key"), bearer):
            self._error(401, "invalid x-api-key")
            return False
        if not self.headers.get("anthropic-version"):
            self._error(400, "anthropic-version: header is required")
            return False
        return True

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/v1/models":
            self._error(404, f"Not found: {self.path}")
            return
        self.double.models_requests += 1
        if not self._authorised():
            return
        if self.double.models_status != 200:
            self._error(self.double.models_status, "scripted")
            return
        model = {
            "type": "model",
            "id": "claude-double",
            "display_name": "Double",
            "created_at": "2025-01-01T00:00:00Z",
        }
        self._json(
            200, {"data": [model], "has_more": False, "first_id": "claude-double", "last_id": "claude-double"}
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        double = self.double
        double.bodies.append(body)
        double.headers.append({k.lower(): v for k, v in self.headers.items()})
        if self.path.split("?")[0] != "/v1/messages":
            self._error(404, f"Not found: {self.path}")
            return
        if not self._authorised():
            return
        scripted = double.next_scripted()
        if scripted is not None:
            self._error(scripted[0], f"scripted {scripted[0]}", scripted[1])
            return
        problem = invalid(body)
        if problem:
            self._error(400, problem)
            return
        if double.mode == "blackhole":
            double._release.wait()
            return
        _Answer(self, body).send()


class _Answer:
    """One answer to a valid request, whole or as the SSE event sequence."""

    def __init__(self, handler: _Handler, body: dict[str, Any]) -> None:
        self.handler = handler
        self.body = body
        self.double = handler.double
        self.usage = self.double.cache_usage(body)
        words = self.double.answer.split(" ")
        self.stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            words, self.stop_reason = words[: body["max_tokens"]], "max_tokens"
        self.words = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        self.tool = self._tool_to_call()

    def _tool_to_call(self) -> str | None:
        if self.double.mode != "tool" or not self.body.get("tools"):
            return None
        last = self.body["messages"][-1]["content"]
        if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
            return None
        return str(self.body["tools"][0]["name"])

    def message(self, content: list[dict[str, Any]], stop: str | None, output: int) -> dict[str, Any]:
        return {
            "id": "msg_double", "type": "message", "role": "assistant", "model": self.body.get("model"),
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": self.usage | {"output_tokens": output},
        }  # fmt: skip

    def send(self) -> None:
        if not self.body.get("stream"):
            text = {"type": "text", "text": "".join(self.words)}
            self.handler._json(200, self.message([text], self.stop_reason, len(self.words)))
            return
        handler = self.handler
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        self.event("message_start", {"message": self.message([], None, 1)})
        self.event("ping", {})
        if self.tool is not None:
            self._tool_blocks()
        elif not self._text_block():
            return
        self.event("message_delta", {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                     "usage": {"output_tokens": len(self.words) or 3}})  # fmt: skip
        self.event("message_stop", {})

    def _text_block(self) -> bool:
        """The text block; ``False`` when the mode broke the stream off."""
        mode = self.double.mode
        self.event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for word in self.words:
            self.event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
            if mode == "kill":
                sock = self.handler.connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                return False
            if mode == "error_event":
                error = {"type": "overloaded_error", "message": "Overloaded"}
                self.event("error", {"error": error})
                return False
        if mode == "truncated":
            return False
        self.event("content_block_stop", {"index": 0})
        return True

    def _tool_blocks(self) -> None:
        self.words, self.stop_reason = [], "tool_use"
        self.event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        self.event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}
        )
        self.event("content_block_stop", {"index": 0})
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_double", "name": self.tool, "input": {}}
        self.event("content_block_start", {"index": 1, "content_block": block})
        for piece in ('{"city": ', '"Paris"}'):
            delta = {"type": "input_json_delta", "partial_json": piece}
            self.event("content_block_delta", {"index": 1, "delta": delta})
        self.event("content_block_stop", {"index": 1})

    def event(self, name: str, data: dict[str, Any]) -> None:
        payload = json.dumps({"type": name} | data)
        self.handler.wfile.write(f"event: {name}\ndata: {payload}\n\n".encode())
        self.handler.wfile.flush()


AnthropicDouble.handler = _Handler
