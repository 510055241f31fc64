"""A protocol double of the Ollama server (a test double, not Ollama).

The Ollama server binary cannot be installed on this machine, so the Ollama backend
is tested with the official ``ollama`` client against this small HTTP server that
speaks the documented protocol: ``GET /api/tags``, ``POST /api/show``, and
``POST /api/chat`` streaming NDJSON, with Ollama's error shape
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


class OllamaDouble:
    def __init__(self, models: dict[str, int] | None = None) -> None:
        self.models = models or {"llama2:latest": 4096}  # name -> context length
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer /api/chat with, in order
        self.drop_after: int | None = None  # close the connection after this many chunks
        self.delay = 0.0
        handler = self._handler()
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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length", 0))
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    models = [
                        {
                            "name": n,
                            "model": n,
                            "modified_at": "2024-01-01T00:00:00Z",
                            "size": 1,
                            "digest": "0" * 64,
                            "details": {
                                "format": "gguf",
                                "family": "llama",
                                "parameter_size": "7B",
                                "quantization_level": "Q4_0",
                            },
                        }
                        for n in double.models
                    ]
                    self._json(200, {"models": models})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                double.requests.append({"path": self.path, **body})
                name = body.get("model", "")
                if ":" not in name:  # as Ollama does, a bare name means the "latest" tag
                    name += ":latest"
                if self.path == "/api/show":
                    if name not in double.models:
                        self._json(404, {"error": f"model '{name}' not found"})
                        return
                    self._json(
                        200,
                        {
                            "modelfile": "",
                            "parameters": "",
                            "template": "{{ .Prompt }}",
                            "details": {"format": "gguf", "family": "llama"},
                            "model_info": {"llama.context_length": double.models[name]},
                        },
                    )
                elif self.path == "/api/chat":
                    self._chat(body, name)
                else:
                    self._json(404, {"error": "not found"})

            def _chat(self, body: dict[str, Any], name: str) -> None:
                if double.fail_next:
                    status = double.fail_next.pop(0)
                    self._json(status, {"error": f"simulated failure {status}"})
                    return
                if name not in double.models:
                    self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
                    return
                words = ("Echo: " + body["messages"][-1]["content"]).split(" ")
                limit = (body.get("options") or {}).get("num_predict")
                if limit:
                    words = words[:limit]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                now = datetime.now(UTC).isoformat()
                for i, word in enumerate(words):
                    if double.drop_after is not None and i == double.drop_after:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # simulate a crash mid-stream
                        return
                    time.sleep(double.delay)
                    piece = word if i == 0 else " " + word
                    self._chunk(
                        {
                            "model": name,
                            "created_at": now,
                            "message": {"role": "assistant", "content": piece},
                            "done": False,
                        }
                    )
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                self._chunk(
                    {
                        "model": name,
                        "created_at": now,
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                        "done_reason": "length" if limit and limit <= len(words) else "stop",
                        "total_duration": 1,
                        "load_duration": 1,
                        "prompt_eval_count": prompt_tokens,
                        "prompt_eval_duration": 1,
                        "eval_count": len(words),
                        "eval_duration": 1,
                    }
                )
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler
