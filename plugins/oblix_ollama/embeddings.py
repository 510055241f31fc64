"""Embeddings from Ollama's ``/api/embed`` (``ollama:MODEL``, e.g. ``ollama:nomic-embed-text``).

Runs on ``$OLLAMA_HOST`` (default ``http://127.0.0.1:11434``), so it is local unless that
host is another machine. The dimension is the model's, learnt from one call.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from oblix.plugin import Embedder, EmbedderError, redact_url

DEFAULT_MODEL = "nomic-embed-text"
HOST_ENV = "OLLAMA_HOST"
DEFAULT_HOST = "http://127.0.0.1:11434"


def _loopback(url: str) -> bool:
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OllamaEmbedder(Embedder):
    """``/api/embed`` through the official ``ollama`` client."""

    def __init__(
        self, model: str | None = None, *, endpoint: str | None = None, timeout: float = 60.0
    ) -> None:
        import ollama

        self.model = model or DEFAULT_MODEL
        self.host = endpoint or os.environ.get(HOST_ENV) or DEFAULT_HOST
        self.name = f"ollama:{self.model}"
        self.is_local = _loopback(self.host)
        self._client = ollama.Client(host=self.host, timeout=timeout)
        self._dimension: int | None = None
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:  # type: ignore[override]  # learnt from one call
        if self._dimension is None:
            with self._lock:
                if self._dimension is None:
                    self._dimension = len(self._call(["dimension probe"])[0])
        return self._dimension

    def _call(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            response = self._client.embed(model=self.model, input=list(texts))
        except Exception as exc:  # ollama.ResponseError, httpx errors, ConnectionError
            raise EmbedderError(
                f"Ollama at {redact_url(self.host)} could not embed with {self.model}: {exc}"
            ) from None
        return [list(map(float, row)) for row in response["embeddings"]]

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._call([t if t.strip() else "." for t in texts])
        if len(vectors) != len(texts):
            raise EmbedderError(f"{self.name} answered {len(vectors)} vectors for {len(texts)} texts.")
        return vectors

    def __repr__(self) -> str:
        return f"<OllamaEmbedder {self.name} at {redact_url(self.host)}>"


def make_ollama_embedder(model: str | None = None, **options: Any) -> OllamaEmbedder:
    return OllamaEmbedder(model, **options)
