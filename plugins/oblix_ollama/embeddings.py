"""Embeddings from Ollama's ``/api/embed`` (``ollama:MODEL``, e.g. ``ollama:nomic-embed-text``).

Runs on ``$OLLAMA_HOST`` (default ``http://127.0.0.1:11434``), so it is local unless that
host is another machine. The dimension is the model's, learnt from one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from oblix.plugin import EmbedderError, RemoteEmbedder, redact_url

DEFAULT_MODEL = "nomic-embed-text"
HOST_ENV = "OLLAMA_HOST"
DEFAULT_HOST = "http://127.0.0.1:11434"


class OllamaEmbedder(RemoteEmbedder):
    """``/api/embed`` through the official ``ollama`` client."""

    def __init__(
        self, model: str | None = None, *, endpoint: str | None = None, timeout: float = 60.0
    ) -> None:
        import ollama

        self.model = model or DEFAULT_MODEL
        self.host = endpoint or os.environ.get(HOST_ENV) or DEFAULT_HOST
        self.name = f"ollama:{self.model}"
        super().__init__(self.host)
        self._client = ollama.Client(host=self.host, timeout=timeout)

    def _call(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            response = self._client.embed(model=self.model, input=list(texts))
        except Exception as exc:  # ollama.ResponseError, httpx errors, ConnectionError
            raise EmbedderError(
                f"Ollama at {redact_url(self.host)} could not embed with {self.model}: {exc}"
            ) from None
        return [list(map(float, row)) for row in response["embeddings"]]

    def __repr__(self) -> str:
        return f"<OllamaEmbedder {self.name} at {redact_url(self.host)}>"


def make_ollama_embedder(model: str | None = None, **options: Any) -> OllamaEmbedder:
    return OllamaEmbedder(model, **options)
