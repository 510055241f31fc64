"""The Ollama backend, built on the official ``ollama`` async client."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

from oblix.plugin import (
    ConfigError,
    GenerationRequest,
    ModelBackend,
    ModelError,
    OblixError,
    StreamChunk,
    connection_error,
    provider_usage,
    redact_url,
    require,
    status_error,
    usage_info,
)

HOST_ENV = "OLLAMA_HOST"
DEFAULT_HOST = "http://127.0.0.1:11434"
#: How long Ollama keeps a model loaded after a request, unless ``keep_alive`` says otherwise.
DEFAULT_KEEP_ALIVE_S = 300.0


def keep_alive_seconds(value: str | int | float | None) -> float:
    """Ollama's ``keep_alive`` (``"5m"``, ``"1h30m"``, ``"90s"``, seconds, negative = forever)."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    text = value.strip()
    if text.startswith("-"):
        return math.inf
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s|ms)?", text)
    if not parts or "".join(n + (u or "") for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"keep_alive must be a duration such as '5m', '90s' or -1, got {value!r}.")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "": 1.0}
    return sum(float(n) * scale[u] for n, u in parts)


def _import_ollama() -> Any:
    return require("ollama", "ollama", "The Ollama backend")


def _same_model(wanted: str, installed: str) -> bool:
    def norm(name: str) -> str:
        return name if ":" in name else f"{name}:latest"

    return norm(wanted) == norm(installed)


#: The options of Ollama's API a request may set (``temperature`` and ``num_predict`` come from
#: the request's own fields; ``num_ctx`` is the model's window).
OLLAMA_OPTIONS = frozenset(
    {"seed", "stop", "top_k", "top_p", "min_p", "typical_p", "tfs_z", "repeat_last_n", "repeat_penalty"}
    | {"presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau", "mirostat_eta"}
    | {"penalize_newline", "num_keep", "num_predict", "num_thread", "num_gpu", "num_batch"}
)


class OllamaBackend(ModelBackend):
    """Chat with a model installed in an Ollama server.

    The server is ``endpoint``, else ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``.
    ``hook_model`` checks that the model is installed and learns its trained context
    length and whether it is loaded. While a request waits for Ollama to load the model
    (a cold start: not loaded, or unused for longer than ``keep_alive``), the model is
    ``warming``: routing lets a ready model answer concurrent requests meanwhile.
    Options: ``num_ctx`` (context window to request; default: the trained length capped
    at 8192, always passed explicitly because Ollama's own default silently
    truncates long prompts) and ``keep_alive``; unknown options are rejected. Per-request
    options go to Ollama's ``options``. An answer is complete only on ``done: true``.
    """

    model_type = "ollama"
    default_local = True
    #: Ollama's per-request options (its API's ``options``); any other is an error, not dropped.
    request_options = OLLAMA_OPTIONS
    end_is_complete = False

    def __init__(
        self, model_name: str, *, num_ctx: int | None = None, keep_alive: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model_name, **kwargs)
        self.host = self.endpoint or os.environ.get(HOST_ENV) or DEFAULT_HOST
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self._keep_alive_s = keep_alive_seconds(keep_alive)
        self._loaded_until = 0.0  # monotonic time until which Ollama keeps the model loaded
        self._loading = 0  # requests waiting for a cold model's first token
        self._client: Any = None
        self._http: Any = None
        self._trained_window: int | None = None

    @property
    def warming(self) -> bool:
        """Whether a request is waiting for Ollama to load the model (a cold start)."""
        return self._loading > 0

    def _cold(self) -> bool:
        return time.monotonic() >= self._loaded_until

    async def _learn_loaded(self) -> None:
        """Ask Ollama (``/api/ps``) whether the model is loaded now."""
        try:
            running = await self._client.ps()
        except Exception:  # an older server without /api/ps: assume cold, learn from requests
            return
        if any(_same_model(self.model_name, m.model or "") for m in running.models):
            self._loaded_until = time.monotonic() + self._keep_alive_s

    @property
    def default_context_window(self) -> int:
        return self.num_ctx or min(self._trained_window or 2048, 8192)

    async def start(self) -> None:
        ollama = _import_ollama()
        self._client = ollama.AsyncClient(host=self.host)
        self._http = _httpx()  # the HTTP library the ollama client is built on (its dependency)
        try:
            await self._check_model(ollama, self._http)
            await self._learn_loaded()
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

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        ollama = _import_ollama()
        options = dict(request.options)
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        options["num_ctx"] = self.context_window
        started, cold = False, self._cold()
        self._loading += cold
        try:
            parts = await self._client.chat(
                model=self.model_name,
                messages=[m.to_dict() for m in request.messages],
                stream=True,
                options=options,
                keep_alive=self.keep_alive,
            )
            async for part in parts:
                if not started:
                    started, self._loading = True, self._loading - cold
                    cold = False
                self._loaded_until = time.monotonic() + self._keep_alive_s
                text = part.message.content if part.message else ""
                if text:
                    yield StreamChunk(text)
                if part.done:
                    usage, note = provider_usage(part.prompt_eval_count, part.eval_count)
                    yield StreamChunk(
                        usage=usage, finish_reason=part.done_reason or "stop", info=usage_info(note)
                    )
        except ModelError:
            raise
        except ollama.ResponseError as exc:
            raise status_error(self.model_id, self.host, exc.status_code, str(exc.error)) from None
        except (self._http.HTTPError, OSError) as exc:
            raise connection_error(self.model_id, self.host, exc, started=started) from None
        finally:
            self._loading -= cold  # still waiting for the first token: no longer

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"endpoint": redact_url(self.host)}


def _httpx() -> Any:
    """httpx, which the ``ollama`` package declares as its HTTP library (``Requires-Dist: httpx``)."""
    return require("httpx", "ollama", "The Ollama backend")
