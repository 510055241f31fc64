"""The OpenAI backend, built on the official ``openai`` async client."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
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
    provider_usage,
    redact_url,
    require,
    retry_after,
    seconds_option,
    status_error,
    usage_info,
)

#: The window assumed for a model on a custom endpoint that does not report one (llama.cpp's
#: and Ollama's usual default): conservative, so that history never overflows it.
CUSTOM_ENDPOINT_WINDOW = 2048
#: OpenAI's API, where requests go without ``endpoint`` or ``$OPENAI_BASE_URL``.
OPENAI_API_URL = "https://api.openai.com/v1"
#: Fields of a ``/models`` entry that give the window (vLLM, OpenRouter, LM Studio, llama.cpp...).
WINDOW_FIELDS = ("context_window", "context_length", "max_model_len", "max_context_length", "n_ctx")
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


log = logging.getLogger(__name__)


def _openai() -> Any:
    return require("openai", "openai", "The OpenAI backend")


class OpenAIBackend(ModelBackend):
    """Chat completions from OpenAI or any OpenAI-compatible server (``endpoint``).

    The API key comes from ``api_key`` or ``$OPENAI_API_KEY`` and is kept in memory
    only. Against a custom ``endpoint`` a key is optional. Options: ``timeout`` (seconds
    allowed between two reads of the answer, default 60), ``connect_timeout`` (default
    5), ``first_byte_timeout`` (seconds until the response starts, default 10),
    ``max_retry_wait`` (the longest ``Retry-After`` of a 429/503 worth waiting for, default
    20 s: the executor's retry waits it out; a longer one moves on to the next model at once)
    and ``context_window``. The SDK's own retries are off: a request makes at most
    ``1 + [execution] max_retries`` calls to the endpoint. Unknown options are rejected.
    Request options such as ``tools`` and ``tool_choice`` go to the API; the model's tool
    calls come back in the result.
    An endpoint that cannot be reached within the connect and first-byte timeouts is
    not retried on the same request, so
    the next model answers within about 15 s. An answer is complete only when the
    server sends a ``finish_reason``; a stream that ends without one is a failure.
    """

    model_type = "openai"
    default_local = False
    key_env_var = "OPENAI_API_KEY"
    end_is_complete = False
    supports_tools = True

    def __init__(
        self,
        model_name: str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        first_byte_timeout: float = 10.0,
        max_retry_wait: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, **kwargs)
        self.max_retry_wait = seconds_option("max_retry_wait", max_retry_wait, allow_zero=True)
        self.timeout = seconds_option("timeout", timeout)
        self.connect_timeout = seconds_option("connect_timeout", connect_timeout)
        self.first_byte_timeout = seconds_option("first_byte_timeout", first_byte_timeout)
        self._client: Any = None
        self._http: Any = None  # the HTTP library module the installed openai uses
        self._usage_supported = True
        #: Where the window comes from: "configured", "reported by the server", a default.
        self.window_source = "configured" if self.context_window_override else "default"
        self._reported_window: int | None = None

    @property
    def base_url(self) -> str:
        """Where requests go: ``endpoint``, else ``$OPENAI_BASE_URL`` (as the openai SDK reads it),
        else OpenAI's API. Describing, health checks and connectivity probes use the same URL."""
        url = self.endpoint or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_URL
        if url is not self.endpoint:
            redact_url(url)  # remembers credentials in the URL, for scrubbing
        return url

    @property
    def where(self) -> str:
        url = self.base_url
        return "api.openai.com" if url == OPENAI_API_URL else redact_url(url)

    @property
    def default_context_window(self) -> int:
        if self._reported_window:
            return self._reported_window
        if self.endpoint:  # a self-hosted server: OpenAI's names say nothing of its window
            return CUSTOM_ENDPOINT_WINDOW
        for prefix, window in KNOWN_WINDOWS.items():
            if self.model_name.startswith(prefix):
                return window
        return 8192

    async def start(self) -> None:
        openai = _openai()
        key = self.get_key()
        if not key:
            if self.endpoint is None:
                raise ConfigError(
                    f"No API key for {self.model_id}: pass api_key=... or set ${self.key_env_var}."
                )
            key = "not-needed"  # OpenAI-compatible servers often take no key; the client needs one
        timeout = openai.Timeout(self.timeout, connect=self.connect_timeout)
        # our own instance of the SDK's public default HTTP client: transport errors raised
        # mid-stream come from its library, found from its class
        http_client = openai.DefaultAsyncHttpxClient(timeout=timeout)
        self._http = http_library(http_client)
        self._client = openai.AsyncOpenAI(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=timeout, http_client=http_client
        )
        if self.endpoint and not self.context_window_override:
            await self._learn_window()

    async def _learn_window(self) -> None:
        """Ask a custom endpoint's ``GET /models`` for this model's window (no tokens spent)."""
        try:
            with anyio.fail_after(self.first_byte_timeout):
                page = await self._client.models.list()
            entries = [m.to_dict() for m in page.data]
        except Exception as exc:  # an endpoint without /models: keep the conservative default
            log.debug("%s: no /models listing (%s)", self.model_id, exc)
            entries = []
        mine = [e for e in entries if e.get("id") == self.model_name]
        mine = mine or (entries if len(entries) == 1 else [])
        window = _reported_window(mine[0]) if mine else None
        if window:
            self._reported_window = window
            self.window_source = "reported by the server"
        else:
            default = CUSTOM_ENDPOINT_WINDOW
            self.window_source = f"default for custom endpoints ({default}); set context_window"
            log.info(
                "%s: the server does not report a context window; assuming %d tokens (set context_window "
                "in its [[models]] entry for more)",
                self.model_id,
                CUSTOM_ENDPOINT_WINDOW,
            )

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
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
        return params

    async def _open(self, request: GenerationRequest) -> Any:
        """Send the request; the response has started when this returns (first-byte timeout)."""
        openai = _openai()
        try:
            with anyio.fail_after(self.first_byte_timeout):
                try:
                    return await self._client.chat.completions.create(**self._params(request))
                except openai.BadRequestError as exc:
                    if not (self._usage_supported and "stream_options" in str(exc)):
                        raise
                    self._usage_supported = False  # an older compatible server: no usage in streams
                    return await self._client.chat.completions.create(**self._params(request))
        except TimeoutError:
            raise connection_error(
                self.model_id,
                self.where,
                TimeoutError(f"no response in {self.first_byte_timeout}s"),
                started=False,
            ) from None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        openai = _openai()
        started = False
        try:
            response = await self._open(request)
            started = True
            try:
                async for event in response:
                    try:
                        chunks = _chunks(event)
                    except MalformedEvent as exc:  # the SDK checks no types: a hostile endpoint's shapes
                        raise PermanentModelError(
                            f"{self.model_id}: {self.where} sent a malformed stream event ({exc}).",
                            model_id=self.model_id,
                        ) from None
                    for chunk in chunks:
                        yield chunk
            finally:
                await _close_stream(response)
        except ModelError:
            raise
        except openai.APIStatusError as exc:
            detail = getattr(exc, "message", "") or str(exc)
            error = status_error(self.model_id, self.where, exc.status_code, detail)
            raise self._waited(error, exc) from None
        except (openai.APIConnectionError, self._http.HTTPError, OSError) as exc:
            raise connection_error(self.model_id, self.where, exc, started=started) from None

    def _waited(self, error: ModelError, exc: Any) -> ModelError:
        """``error`` carrying the ``Retry-After`` of a 429/503 (the executor's retry waits it
        out), or moving on at once when it asks for longer than ``max_retry_wait``."""
        wait = retry_after(exc.response.headers) if exc.status_code in (429, 503) else None
        if not isinstance(error, TransientModelError) or wait is None:
            return error
        if wait > self.max_retry_wait:
            return TransientModelError(
                f"{error} It asks to retry after {wait:g}s (over max_retry_wait={self.max_retry_wait:g}s): "
                "the next model answers.",
                model_id=self.model_id,
                unreachable=True,
            )
        error.retry_after = wait
        return error

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "endpoint": redact_url(self.base_url),
            "context_window_source": self.window_source,
        }

    def health_check(self, timeout: float) -> tuple[bool, str]:
        """``GET /models`` (no tokens spent): any answer but a 429 or a 5xx means it serves."""
        parts = urllib.parse.urlsplit(self.base_url.rstrip("/") + "/models")
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # urllib: no user:pass@
        headers = {"Authorization": f"Bearer {self.get_key() or 'not-needed'}"}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                return True, f"GET /models: HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            return exc.code < 500 and exc.code != 429, f"GET /models: HTTP {exc.code}"
        except OSError as exc:
            return False, f"GET /models: {describe_cause(exc)}"


def _reported_window(entry: dict[str, Any]) -> int | None:
    """The context window a ``/models`` entry reports, if any (top level or under ``meta``)."""
    meta = entry.get("meta")
    for where in (entry, meta if isinstance(meta, dict) else {}):
        for name in (*WINDOW_FIELDS, "n_ctx_train"):
            value = where.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 16:
                return value
    return None


class MalformedEvent(ValueError):
    """A streamed event of a shape no OpenAI-compatible endpoint sends (the message says which part)."""


def _checked(value: Any, kind: type, what: str) -> Any:
    """``value`` if it is ``None`` or a ``kind``, else :class:`MalformedEvent` naming ``what``."""
    if value is None or isinstance(value, kind):
        return value
    raise MalformedEvent(f"{what} is {type(value).__name__}, not {kind.__name__}")


def _tool_deltas(calls: list[Any]) -> tuple[dict[str, Any], ...]:
    """The tool-call deltas as dicts: an integer ``index``, strings for ``id``, ``type``, and the
    function's ``name`` and ``arguments`` (each may be absent), else :class:`MalformedEvent`."""
    deltas = []
    for call in calls:
        if not hasattr(call, "model_dump"):
            raise MalformedEvent(f"a tool call is {type(call).__name__}, not an object")
        delta = call.model_dump(exclude_none=True, warnings=False)
        function = delta.get("function", {})
        index = delta.get("index", 0)
        strings = [delta.get("id", ""), delta.get("type", "")]
        if isinstance(function, dict):
            strings += [function.get("name", ""), function.get("arguments", "")]
        if (
            not isinstance(function, dict)
            or type(index) is not int
            or not all(isinstance(value, str) for value in strings)
        ):
            raise MalformedEvent("a tool call's index, id, type, name or arguments is of the wrong type")
        deltas.append(delta)
    return tuple(deltas)


def _chunks(event: Any) -> list[StreamChunk]:
    """The chunks of one streamed event: text, tool-call deltas and finish reason, then usage.
    Raises :class:`MalformedEvent` for parts of the wrong type (``content: 123``, ``choices: "x"``)."""
    chunks = []
    if _checked(event.choices, list, "choices"):
        choice = event.choices[0]
        delta = getattr(choice, "delta", None)
        if (
            choice is None
            or isinstance(choice, str | int | float | list)
            or isinstance(delta, str | int | list)
        ):
            raise MalformedEvent(f"choices[0] is {type(choice).__name__} with delta {type(delta).__name__}")
        text = _checked(delta.content if delta else None, str, "choices[0].delta.content")
        calls = _checked(getattr(delta, "tool_calls", None) if delta else None, list, "tool_calls")
        deltas = _tool_deltas(calls) if calls else None
        finish = _checked(choice.finish_reason, str, "choices[0].finish_reason")
        if text or deltas or finish:
            chunks.append(StreamChunk(text or "", finish_reason=finish, tool_calls=deltas))
    if getattr(event, "usage", None):
        details = getattr(event.usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None)
        # checked: an endpoint's "100", [1], -10000000 or 1e30 is dropped (and estimated), never counted
        reported = event.usage
        usage, note = provider_usage(
            getattr(reported, "prompt_tokens", None), getattr(reported, "completion_tokens", None), cached
        )
        chunks.append(StreamChunk(usage=usage, info=usage_info(note)))
    return chunks


async def _close_stream(response: Any) -> None:
    """Close the SDK's event generator, so the GC never finalises it later (possibly in another
    event loop), then the HTTP response.

    ``AsyncStream`` offers no public way to close its generator: ``_iterator`` is the one
    private attribute this backend relies on, pinned by ``openai<4`` in pyproject.toml and
    checked by ``tests/test_openai.py::test_the_sdk_stream_still_keeps_its_event_generator``.
    """
    events = getattr(response, "_iterator", None)
    if events is not None:
        await events.aclose()
    await response.close()
