"""The Ollama backend, built on the official ``ollama`` async client."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from oblix_core.errors import ConfigError, OblixError, PermanentModelError, TransientModelError
from oblix_core.models import GenerationRequest, ModelBackend, StreamChunk, Usage

HOST_ENV = "OLLAMA_HOST"
DEFAULT_HOST = "http://127.0.0.1:11434"
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}


def _import_ollama() -> Any:
    try:
        import ollama
    except ImportError:
        raise ConfigError(
            "The Ollama backend needs the ollama package: pip install 'oblix[ollama]'."
        ) from None
    return ollama


def _same_model(wanted: str, installed: str) -> bool:
    def norm(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return norm(wanted) == norm(installed)


class OllamaBackend(ModelBackend):
    """Chat with a model installed in an Ollama server.

    The server is ``endpoint``, else ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``.
    ``hook_model`` checks that the model is installed. Options: ``num_ctx`` (context
    window to request), ``keep_alive``; other options go to Ollama's ``options``.
    """

    model_type = "ollama"
    default_local = True

    def __init__(
        self, model_name: str, *, num_ctx: int | None = None, keep_alive: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model_name, **kwargs)
        self.host = self.endpoint or os.environ.get(HOST_ENV) or DEFAULT_HOST
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self._client: Any = None
        self._trained_window: int | None = None
        self.reject_unknown_options()

    @property
    def context_window(self) -> int:
        return self._context_window or self.num_ctx or self._trained_window or 2048

    async def start(self) -> None:
        ollama = _import_ollama()
        import httpx  # a dependency of ollama

        self._client = ollama.AsyncClient(host=self.host)
        try:
            await self._check_model(ollama, httpx)
        except BaseException:
            await self.aclose()  # do not leave an HTTP client for the GC to close
            raise

    async def _check_model(self, ollama: Any, httpx: Any) -> None:
        """Check the server answers and has the model; learn its trained context length."""
        try:
            listing = await self._client.list()
        except (httpx.HTTPError, ConnectionError) as exc:
            raise OblixError(
                f"Cannot reach Ollama at {self.host} ({exc}). Start it with `ollama serve`, or point "
                f"endpoint= / ${HOST_ENV} at your server."
            ) from exc
        installed = [m.model for m in listing.models if m.model]
        if not any(_same_model(self.model_name, name) for name in installed):
            raise ConfigError(
                f"Ollama at {self.host} does not have {self.model_name!r} (installed: "
                f"{', '.join(installed) or 'none'}). Pull it with `ollama pull {self.model_name}`."
            )
        try:
            shown = await self._client.show(self.model_name)
            info = shown.modelinfo or {}
            self._trained_window = next(
                (int(v) for k, v in info.items() if k.endswith(".context_length")), None
            )
        except ollama.ResponseError:
            self._trained_window = None

    def _classify(self, exc: Exception) -> Exception:
        ollama = _import_ollama()
        if isinstance(exc, ollama.ResponseError):
            status = exc.status_code
            text = f"{self.model_id}: Ollama answered HTTP {status}: {exc.error}"
            if status in TRANSIENT_STATUSES:
                return TransientModelError(text, model_id=self.model_id)
            return PermanentModelError(text, model_id=self.model_id)
        return TransientModelError(
            f"{self.model_id}: connection to {self.host} failed: {exc!r}", model_id=self.model_id
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        if self._client is None:
            raise PermanentModelError(f"{self.model_id} was not started; hook it with hook_model.")
        ollama = _import_ollama()
        import httpx

        options = dict(request.options)
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if self.num_ctx:
            options["num_ctx"] = self.num_ctx
        try:
            parts = await self._client.chat(
                model=self.model_name,
                messages=[m.to_dict() for m in request.messages],
                stream=True,
                options=options or None,
                keep_alive=self.keep_alive,
            )
            async for part in parts:
                text = part.message.content if part.message else ""
                if text:
                    yield StreamChunk(text)
                if part.done:
                    yield StreamChunk(
                        usage=Usage(part.prompt_eval_count, part.eval_count), finish_reason=part.done_reason
                    )
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as exc:
            raise self._classify(exc) from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"endpoint": self.host}
