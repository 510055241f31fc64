"""Embeddings from OpenAI or any OpenAI-compatible ``/v1/embeddings`` endpoint (``openai``).

``openai`` uses OpenAI (``$OPENAI_API_KEY``); ``openai:MODEL`` names the model
(``text-embedding-3-small`` by default); ``endpoint=`` (or ``$OPENAI_BASE_URL``) points it
at a compatible server (llama.cpp's, vLLM, LM Studio, ``oblix server``). An endpoint on
this machine (loopback) counts as local: a private workspace may use it; anything else
sends the texts off the machine. The dimension is the model's, learnt from one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from oblix.plugin import EmbedderError, RemoteEmbedder, redact_url, remember_secret, scrub_secrets

DEFAULT_MODEL = "text-embedding-3-small"
#: OpenAI's own models, whose dimension is known without a call.
KNOWN = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbedder(RemoteEmbedder):
    """``/v1/embeddings`` through the official ``openai`` client (its retries and timeouts)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        import openai

        self.model = model or DEFAULT_MODEL
        self.endpoint = endpoint or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("unused" if self.endpoint else None)
        if not key:
            raise EmbedderError(
                "The openai embedder needs a key: set OPENAI_API_KEY, pass embedding_api_key=, or give "
                "endpoint= for a compatible server."
            )
        remember_secret(key)
        self.name = (
            f"openai:{self.model}"
            if not self.endpoint
            else f"openai:{self.model}@{redact_url(self.endpoint)}"
        )
        self._client = openai.OpenAI(
            api_key=key, base_url=self.endpoint, timeout=timeout, max_retries=max_retries
        )
        super().__init__(self.endpoint, KNOWN.get(self.model) if not self.endpoint else None)

    def _call(self, texts: Sequence[str]) -> list[list[float]]:
        import openai

        try:
            response = self._client.embeddings.create(model=self.model, input=list(texts))
        except openai.OpenAIError as exc:
            raise EmbedderError(f"{self.name} failed: {scrub_secrets(str(exc))}") from None
        rows = sorted(response.data, key=lambda d: d.index)
        return [list(map(float, row.embedding)) for row in rows]

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<OpenAIEmbedder {self.name}>"


def make_openai_embedder(model: str | None = None, **options: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(model, **options)
