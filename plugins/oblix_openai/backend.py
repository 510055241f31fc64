"""The OpenAI backend, built on the official ``openai`` async client."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from oblix_core.errors import ConfigError, PermanentModelError, TransientModelError
from oblix_core.models import GenerationRequest, ModelBackend, StreamChunk, Usage

API_KEY_ENV = "OPENAI_API_KEY"

#: Context windows of well-known OpenAI models (prefix match); others default to 8192.
KNOWN_WINDOWS = {
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4": 200_000,
    "gpt-5": 400_000,
}
#: HTTP statuses worth a retry or a fallback.
TRANSIENT_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigError(
            "The OpenAI backend needs the openai package: pip install 'oblix[openai]'."
        ) from None
    return openai


class OpenAIBackend(ModelBackend):
    """Chat completions from OpenAI or any OpenAI-compatible server (``endpoint``).

    The API key comes from ``api_key`` or ``$OPENAI_API_KEY`` and is kept in memory
    only. Against a custom ``endpoint`` a key is optional. Options: ``timeout``
    (seconds, default 60) and ``context_window``; other options are passed to
    ``chat.completions.create``.
    """

    model_type = "openai"
    default_local = False

    def __init__(self, model_name: str, *, timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(model_name, **kwargs)
        self.timeout = timeout
        self._client: Any = None
        self._usage_supported = True
        self.reject_unknown_options()

    @property
    def context_window(self) -> int:
        if self._context_window:
            return self._context_window
        for prefix, window in KNOWN_WINDOWS.items():
            if self.model_name.startswith(prefix):
                return window
        return 8192

    async def start(self) -> None:
        openai = _import_openai()
        key = self._api_key or os.environ.get(API_KEY_ENV)
        if not key:
            if self.endpoint is None:
                raise ConfigError(f"No API key for {self.model_id}: pass api_key=... or set ${API_KEY_ENV}.")
            key = "not-needed"  # OpenAI-compatible servers often take no key; the client needs one
        self._client = openai.AsyncOpenAI(
            api_key=key, base_url=self.endpoint, max_retries=0, timeout=self.timeout
        )

    def _classify(self, exc: Exception) -> Exception:
        openai = _import_openai()
        where = self.endpoint or "api.openai.com"
        if isinstance(exc, openai.APITimeoutError):
            return TransientModelError(
                f"{self.model_id}: request to {where} timed out.", model_id=self.model_id
            )
        if isinstance(exc, openai.APIConnectionError):
            return TransientModelError(
                f"{self.model_id}: cannot connect to {where}: {exc}.", model_id=self.model_id
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = getattr(exc, "message", "") or str(exc)
            if status in TRANSIENT_STATUSES:
                return TransientModelError(
                    f"{self.model_id}: HTTP {status} from {where}: {detail}", model_id=self.model_id
                )
            hint = {
                401: " Check the API key.",
                403: " The key lacks access to this model.",
                404: " Check the model name and endpoint.",
            }.get(status, "")
            return PermanentModelError(
                f"{self.model_id}: HTTP {status} from {where}: {detail}.{hint}", model_id=self.model_id
            )
        return exc

    async def _open(self, request: GenerationRequest) -> Any:
        params: dict[str, Any] = {
            "model": self.model_name,
            "messages": [m.to_dict() for m in request.messages],
            "stream": True,
            **request.options,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if self._usage_supported:
            params["stream_options"] = {"include_usage": True}
        return await self._client.chat.completions.create(**params)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        if self._client is None:
            raise PermanentModelError(f"{self.model_id} was not started; hook it with hook_model.")
        openai = _import_openai()
        import httpx  # a dependency of openai

        try:
            try:
                response = await self._open(request)
            except openai.BadRequestError as exc:
                if not (self._usage_supported and "stream_options" in str(exc)):
                    raise
                self._usage_supported = False  # an older compatible server: no usage in streams
                response = await self._open(request)
            try:
                async for event in response:
                    if event.choices:
                        choice = event.choices[0]
                        text = choice.delta.content if choice.delta else None
                        if text or choice.finish_reason:
                            yield StreamChunk(text or "", finish_reason=choice.finish_reason)
                    if getattr(event, "usage", None):
                        yield StreamChunk(
                            usage=Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
                        )
            finally:
                # close the SDK's event generator too, so it is not finalised later by the GC
                # (possibly in another event loop); then the HTTP response
                events = getattr(response, "_iterator", None)
                if events is not None:
                    await events.aclose()
                await response.close()
        except openai.OpenAIError as exc:
            raise self._classify(exc) from exc
        except httpx.HTTPError as exc:  # a connection dropped mid-stream surfaces raw
            raise TransientModelError(
                f"{self.model_id}: connection lost during the answer: {exc!r}.", model_id=self.model_id
            ) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"endpoint": self.endpoint or "https://api.openai.com/v1"}
