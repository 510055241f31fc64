"""The Claude backend, built on the official ``anthropic`` async client (Messages API)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator
from typing import Any

import anyio

from oblix.plugin import (
    ConfigError,
    GenerationRequest,
    ModelBackend,
    ModelError,
    PermanentModelError,
    StreamChunk,
    TransientModelError,
    connection_error,
    describe_cause,
    http_library,
    redact_url,
    require,
    retry_after,
    seconds_option,
    status_error,
)
from oblix_anthropic.mapping import EventReader, conversation, mark_cache, tool_choice, tools

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
#: Answer limits sent when the request sets none (``max_tokens`` is required by the API).
DEFAULT_MAX_TOKENS = {"claude-3-opus": 4096, "claude-3-sonnet": 4096, "claude-3-haiku": 4096}
FALLBACK_MAX_TOKENS = 8192
#: Statuses Anthropic sends when it is busy: 429 (rate limit) and 529 (overloaded).
BUSY_STATUSES = frozenset({429, 529})
#: Error types of an ``error`` event in a started stream that are worth another try.
TRANSIENT_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
#: Request options sent as body fields (``extra_body``), whichever SDK version is installed.
SAMPLING = ("temperature", "top_p", "top_k")


def _anthropic() -> Any:
    return require("anthropic", "anthropic", "The Claude backend")


class AnthropicBackend(ModelBackend):
    """Claude models on Anthropic's Messages API (``ModelType.CLAUDE``), streamed.

    The API key comes from ``api_key`` or ``$ANTHROPIC_API_KEY`` and is kept in memory
    only. ``endpoint`` is the API base URL (default Anthropic's, or the SDK's
    ``$ANTHROPIC_BASE_URL``); a trailing ``/v1`` is dropped. Options: ``timeout``
    (seconds allowed between two reads, default 120), ``connect_timeout`` (5),
    ``first_byte_timeout`` (seconds until the answer starts, 60), ``max_tokens`` (the
    answer limit sent when a request gives none: 4096 for Claude 3, else 8192),
    ``prompt_cache`` (mark the stable prefix for Anthropic's prompt cache, default on)
    and ``max_retry_wait`` (the longest ``retry-after`` worth waiting for on a 429/529,
    default 20 s; a longer one moves the request to the next model at once). The SDK's own
    retries are off and this backend sends each request once: the executor's retries
    (``[execution] max_retries``, waiting at least the ``retry-after`` asked for) are the
    only ones, so a request makes at most ``1 + max_retries`` calls to Claude.

    Request options: ``top_p``, ``top_k``, ``stop`` (or ``stop_sequences``),
    ``metadata``, and OpenAI-shaped ``tools``/``tool_choice``, mapped to Claude's
    ``tool_use``/``tool_result`` blocks. Temperatures above 1 (Claude's maximum) are
    sent as 1. An answer is complete only on ``message_stop``.
    """

    model_type = "claude"
    default_local = False
    key_env_var = "ANTHROPIC_API_KEY"
    end_is_complete = False
    supports_tools = True
    request_options = frozenset(
        {"temperature", "max_tokens", "top_p", "top_k", "stop", "stop_sequences", "metadata"}
        | {"tools", "tool_choice"}
    )

    def __init__(
        self,
        model_name: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        first_byte_timeout: float = 60.0,
        max_tokens: int | None = None,
        prompt_cache: bool = True,
        max_retry_wait: float = 20.0,
        **kwargs: Any,
    ) -> None:
        endpoint = kwargs.pop("endpoint", None)
        if isinstance(endpoint, str) and endpoint.rstrip("/").endswith("/v1"):
            endpoint = endpoint.rstrip("/")[: -len("/v1")]  # the SDK adds /v1/messages itself
        super().__init__(model_name, endpoint=endpoint, **kwargs)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
        self.timeout = seconds_option("timeout", timeout)
        self.connect_timeout = seconds_option("connect_timeout", connect_timeout)
        self.first_byte_timeout = seconds_option("first_byte_timeout", first_byte_timeout)
        self.default_max_tokens = max_tokens or _default_max_tokens(model_name)
        self.prompt_cache = bool(prompt_cache)
        self.max_retry_wait = seconds_option("max_retry_wait", max_retry_wait, allow_zero=True)
        self._client: Any = None
        self._http: Any = None  # the HTTP library module the installed SDK uses

    @property
    def base_url(self) -> str:
        """Where requests go: ``endpoint``, else ``$ANTHROPIC_BASE_URL``, else Anthropic's API."""
        return (self.endpoint or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")

    @property
    def where(self) -> str:
        return redact_url(self.base_url)

    @property
    def default_context_window(self) -> int:
        return 100_000 if self.model_name.startswith(("claude-2.0", "claude-instant")) else 200_000

    async def start(self) -> None:
        anthropic = _anthropic()
        key = self.get_key()
        if not key:
            if self.endpoint is None:
                raise ConfigError(
                    f"No API key for {self.model_id}: pass api_key=... or set ${self.key_env_var}."
                )
            key = "not-needed"  # a gateway or proxy may take no key; the SDK needs one
        timeout = anthropic.Timeout(self.timeout, connect=self.connect_timeout)
        http = anthropic.DefaultAsyncHttpxClient(timeout=timeout)
        self._client = anthropic.AsyncAnthropic(
            api_key=key, base_url=self.endpoint, max_retries=0, timeout=timeout, http_client=http
        )
        # transport errors raised mid-stream come from the SDK's own HTTP library
        self._http = http_library(http)

    def params(self, request: GenerationRequest) -> dict[str, Any]:
        """The Messages API parameters for ``request`` (streamed)."""
        system, turns = conversation(request.messages)
        cached = self.prompt_cache and mark_cache(system, turns)
        params: dict[str, Any] = {
            "model": self.model_name,
            "messages": turns,
            "max_tokens": request.max_tokens or self.default_max_tokens,
            "stream": True,
        }
        if system:
            params["system"] = system
        options = dict(request.options)
        if request.temperature is not None:
            options["temperature"] = min(float(request.temperature), 1.0)
        if "stop" in options:
            stop = options.pop("stop")
            options["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        if "tools" in options:
            options["tools"] = tools(options["tools"])
        if "tool_choice" in options:
            options["tool_choice"] = tool_choice(options["tool_choice"])
        unknown = sorted(set(options) - self.request_options)
        if unknown:
            raise PermanentModelError(
                f"{self.model_id} does not take the option(s) {', '.join(unknown)} "
                f"(options: {', '.join(sorted(self.request_options))}).",
                model_id=self.model_id,
            )
        if cached and "tools" in options:
            options["tools"][-1]["cache_control"] = {"type": "ephemeral"}  # tools precede the system
        # sampling parameters go in the body as such: recent SDKs dropped them from create()
        sampling = {k: options.pop(k) for k in SAMPLING if k in options}
        return params | options | ({"extra_body": sampling} if sampling else {})

    async def _open(self, params: dict[str, Any]) -> Any:
        """Send the request once; the answer has started when this returns.

        A 429 or 529 with a ``retry-after`` of at most ``max_retry_wait`` is a
        :class:`TransientModelError` carrying that wait (the executor's retry waits it out);
        a longer one moves on to the next model at once.
        """
        anthropic = _anthropic()
        try:
            with anyio.fail_after(self.first_byte_timeout):
                return await self._client.messages.create(**params)
        except TimeoutError:
            cause = TimeoutError(f"no response in {self.first_byte_timeout}s")
            raise connection_error(self.model_id, self.where, cause, started=False) from None
        except anthropic.APIStatusError as exc:
            wait = retry_after(exc.response.headers) if exc.status_code in BUSY_STATUSES else None
            if wait is None:
                raise
            if wait > self.max_retry_wait:
                raise self._busy(exc, wait) from None
            error = self._status_error(exc)
            if isinstance(error, TransientModelError):
                error.retry_after = wait
            raise error from None

    def _busy(self, exc: Any, wait: float) -> TransientModelError:
        """A 429/529 asking for a longer wait than is worth it: cool the model, try the next."""
        return TransientModelError(
            f"{self.model_id}: HTTP {exc.status_code} from {self.where}: {_detail(exc)}; it asks to retry "
            f"after {wait:g}s (over max_retry_wait={self.max_retry_wait:g}s): the next model answers.",
            model_id=self.model_id,
            unreachable=True,
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        anthropic = _anthropic()
        params = self.params(request)
        started = False
        try:
            response = await self._open(params)
            started = True
            reader = EventReader()
            try:
                async for event in response:
                    for chunk in reader.read(event):
                        yield chunk
            finally:
                await response.close()
        except ModelError:
            raise
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from None
        except (anthropic.APIConnectionError, self._http.HTTPError, OSError) as exc:
            raise connection_error(self.model_id, self.where, exc, started=started) from None

    def _status_error(self, exc: Any) -> ModelError:
        """An HTTP error status, or an ``error`` event inside a started (HTTP 200) stream."""
        status = exc.status_code
        if status == 529:  # Anthropic's "overloaded"
            return TransientModelError(
                f"{self.model_id}: HTTP 529 from {self.where}: {_detail(exc)} (overloaded).",
                model_id=self.model_id,
            )
        if status < 400:
            kind = _error_type(exc)
            text = f"{self.model_id}: {kind or 'error'} from {self.where} during the answer: {_detail(exc)}."
            if kind in TRANSIENT_ERROR_TYPES:
                return TransientModelError(text, model_id=self.model_id)
            return PermanentModelError(text, model_id=self.model_id)
        return status_error(self.model_id, self.where, status, _detail(exc))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"endpoint": self.where, "max_tokens": self.default_max_tokens}

    def health_check(self, timeout: float) -> tuple[bool, str]:
        """``GET /v1/models`` (no tokens spent): any answer but a 429, 529 or 5xx means it serves."""
        headers = {"x-api-key": self.get_key() or "not-needed", "anthropic-version": API_VERSION}
        request = urllib.request.Request(self.base_url + "/v1/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return True, f"GET /v1/models: HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return exc.code < 500 and exc.code != 429, f"GET /v1/models: HTTP {exc.code}"
        except OSError as exc:
            return False, f"GET /v1/models: {describe_cause(exc)}"


def _default_max_tokens(model_name: str) -> int:
    for prefix, limit in DEFAULT_MAX_TOKENS.items():
        if model_name.startswith(prefix):
            return limit
    return FALLBACK_MAX_TOKENS


def _error_body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_type(exc: Any) -> str | None:
    kind = _error_body(exc).get("type")
    return kind if isinstance(kind, str) else None


def _detail(exc: Any) -> str:
    """The API's own error message (``error.message``), else the SDK's text."""
    message = _error_body(exc).get("message")
    return str(message if isinstance(message, str) and message else getattr(exc, "message", exc)).rstrip(".")
