"""A protocol double of the Ollama server (a test double, not Ollama).

The Ollama server binary cannot be installed on this machine, so the Ollama backend
is tested with the official ``ollama`` client against this small HTTP server that
speaks the documented protocol: ``GET /api/tags``, ``POST /api/show``, and
``GET /api/ps``, ``POST /api/chat`` streaming NDJSON (a model not loaded first "loads" for
``load_delay`` seconds), with Ollama's error shape
(``{"error": "..."}`` and a status). Its "model" answers ``Echo: <last message>``
word by word, honouring ``options.num_predict``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _tag(name: str) -> dict[str, Any]:
    """One entry of ``GET /api/tags``."""
    details = {"format": "gguf", "family": "llama", "parameter_size": "7B", "quantization_level": "Q4_0"}
    return {
        "name": name,
        "model": name,
        "modified_at": "2024-01-01T00:00:00Z",
        "size": 1,
        "digest": "0" * 64,
        "details": details,
    }


def _show(context_length: int) -> dict[str, Any]:
    """The body of ``POST /api/show``."""
    return {
        "modelfile": "",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": "llama"},
        "model_info": {"llama.context_length": context_length},
    }


def _piece(name: str, content: str) -> dict[str, Any]:
    """One streamed ``/api/chat`` line before the end."""
    now = datetime.now(UTC).isoformat()
    return {
        "model": name,
        "created_at": now,
        "message": {"role": "assistant", "content": content},
        "done": False,
    }


def _final(name: str, prompt_tokens: int, words: int, reason: str) -> dict[str, Any]:
    """The last ``/api/chat`` line: ``done: true`` with the counts."""
    return _piece(name, "") | {
        "done": True,
        "done_reason": reason,
        "total_duration": 1,
        "load_duration": 1,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 1,
        "eval_count": words,
        "eval_duration": 1,
    }


class _Handler(BaseHTTPRequestHandler):
    """Ollama's routes, answering from the :class:`OllamaDouble` that owns the server."""

    protocol_version = "HTTP/1.1"
    double: OllamaDouble

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/api/tags":
            self._json(200, {"models": [_tag(n) for n in self.double.models]})
        elif self.path == "/api/ps":  # the models loaded in memory now
            self._json(200, {"models": [_tag(n) for n in sorted(self.double.loaded)]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.double.requests.append({"path": self.path, **body})
        name = body.get("model", "")
        if ":" not in name:  # as Ollama does, a bare name means the "latest" tag
            name += ":latest"
        if self.path == "/api/show" and name in self.double.models:
            self._json(200, _show(self.double.models[name]))
        elif self.path == "/api/show":
            self._json(404, {"error": f"model '{name}' not found"})
        elif self.path == "/api/chat":
            self._chat(body, name)
        elif self.path == "/api/embed":  # answered by the test's real embedder (double.embed), if any
            self._embed(body, name)
        else:
            self._json(404, {"error": "not found"})

    def _embed(self, body: dict[str, Any], name: str) -> None:
        embed = getattr(self.double, "embed", None)
        if embed is None or name not in self.double.models:
            self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self._json(200, {"model": name, "embeddings": [list(map(float, v)) for v in embed(texts)]})

    def _chat(self, body: dict[str, Any], name: str) -> None:
        if self.double.fail_next:
            status = self.double.fail_next.pop(0)
            self._json(status, {"error": f"simulated failure {status}"})
        elif name not in self.double.models:
            self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
        else:
            self._stream(body, name)

    def _stream(self, body: dict[str, Any], name: str) -> None:
        """The model: ``Echo: <last message>`` word by word, honouring ``num_predict``."""
        if name not in self.double.loaded:  # a cold start: Ollama loads the weights first
            time.sleep(self.double.load_delay)
            self.double.loaded.add(name)
        words = ("Echo: " + body["messages"][-1]["content"]).split(" ")
        limit = (body.get("options") or {}).get("num_predict")
        words = words[:limit] if limit else words
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, word in enumerate(words):
            if self.double.drop_after is not None and i == self.double.drop_after:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # simulate a crash mid-stream
                return
            time.sleep(self.double.delay)
            self._chunk(_piece(name, word if i == 0 else " " + word))
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        reason = "length" if limit and limit <= len(words) else "stop"
        self._chunk(_final(name, prompt_tokens, len(words), reason))
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class OllamaDouble:
    """The double: a threaded HTTP server on 127.0.0.1 and the knobs tests turn."""

    def __init__(self, models: dict[str, int] | None = None) -> None:
        self.models = models or {"llama2:latest": 4096}  # name -> context length
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer /api/chat with, in order
        self.drop_after: int | None = None  # close the connection after this many chunks
        self.delay = 0.0
        self.loaded: set[str] = set(self.models)  # loaded in memory (``/api/ps``)
        self.load_delay = 0.0  # seconds a cold model takes to load
        handler = type("Handler", (_Handler,), {"double": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OllamaDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
