"""Model types, the backend interface every model plugin implements, and request records."""

from __future__ import annotations

import copy as copy_module
import enum
import functools
import inspect
import os
import socket
from collections.abc import AsyncGenerator, Hashable, Sequence
from contextlib import aclosing
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import attrs

from oblix_core import secrets
from oblix_core.errors import ConfigError, ModelError, OblixError, PermanentModelError


class ModelType(enum.StrEnum):
    """Built-in model types. Plugins may register further types by name."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    LLAMA_CPP = "llama_cpp"
    #: Anthropic's Claude (the ``oblix[anthropic]`` extra); one of Oblix 0.1.2's model types.
    CLAUDE = "claude"
    CUSTOM = "custom"


#: The :attr:`ModelBackend.tokenizer_key` of the default estimate (4 characters a token).
ESTIMATED_TOKENS = "oblix:4-chars-a-token"


@attrs.frozen
class ChatMessage:
    """A message as sent to a model.

    Tool calling (OpenAI's shape): an assistant message may carry the ``tool_calls`` it
    made, and a ``tool`` message answers one of them (``tool_call_id``).
    """

    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] | None = None
    tool_call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data


@attrs.define
class GenerationRequest:
    """What a backend is asked to generate (backends read it, never change it).

    The core passes a :class:`~oblix_core.request.context.Request`, this class extended with
    the request's id, session and routing fields, trimmed to the model's window.
    """

    messages: Sequence[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Usage:
    """Token counts reported by the model (``None`` where it reported none)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Of ``input_tokens``, those read from the provider's prompt cache (OpenAI's
    #: ``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``).
    cached_input_tokens: int | None = None


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk may carry ``usage`` and no text."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    #: Backend-specific facts about the generation, for the result's metrics (last chunk),
    #: e.g. ``{"prompt_cache": {...}}`` from the llama.cpp backend.
    info: dict[str, Any] | None = None
    #: Tool-call deltas in OpenAI's streaming shape (``index``, ``id``, ``function``...).
    tool_calls: tuple[dict[str, Any], ...] | None = None


R = TypeVar("R", bound=GenerationRequest)
#: Generation options that are fields of the request rather than entries of its ``options``.
_SAMPLING = frozenset({"temperature", "max_tokens"})


def _declared_options(cls: type) -> set[str]:
    """Keyword parameters accepted by the ``__init__`` of ``cls`` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                names.add(param.name)
    return names - {"self", "model_name"}


class ModelBackend:
    """A hooked model. One instance serves every concurrent request for that model.

    Subclasses are registered with ``register(model_type, cls)`` from the
    ``oblix_register_models`` hook and constructed by ``OblixClient.hook_model`` as
    ``cls(model_name, endpoint=..., api_key=..., **options)``. A subclass implements
    :meth:`generate` (an async generator of :class:`StreamChunk`) and, if it needs to,
    :meth:`start` and :meth:`aclose`. The base class carries the rest of the contract:

    * options: every keyword its ``__init__`` (or a base's) declares is accepted; any
      other option is a :class:`ConfigError` naming the accepted ones;
    * keys: :meth:`get_key` returns ``api_key=`` or ``$<key_env_var>`` and registers it
      for scrubbing from every error text (see :mod:`oblix_core.secrets`);
    * :meth:`stream` refuses to run before :meth:`start` completed, scrubs secrets from
      errors, and marks a normal end of :meth:`generate` as a complete answer when
      :attr:`end_is_complete` is true (in-process generators); network backends set it
      false and yield a chunk with ``finish_reason`` only on a positive end of stream
      (``[DONE]``, ``done: true``), so a truncated stream counts as a failure.

    Raise :class:`~oblix_core.errors.TransientModelError` for failures worth a retry and
    :class:`~oblix_core.errors.PermanentModelError` for the others. A subclass written in
    the older style, defining ``stream`` instead of ``generate``, is adapted.
    """

    #: The model type string (``ModelType`` value or a plugin's own).
    model_type: ClassVar[str] = ""
    #: Whether the model runs on this machine (overridable per model with ``local=``).
    default_local: ClassVar[bool] = True
    #: Environment variable that holds the API key, if the backend uses one.
    key_env_var: ClassVar[str | None] = None
    #: Whether a normal end of ``generate()`` is a complete answer (False for network streams).
    end_is_complete: ClassVar[bool] = True
    #: Per-request options the backend understands (``None``: it passes any through).
    request_options: ClassVar[frozenset[str] | None] = None
    #: Whether the backend passes ``tools`` (request option) to the model and streams its
    #: ``tool_calls``; requests with tools are routed only to such models.
    supports_tools: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "stream" in cls.__dict__ and "generate" not in cls.__dict__:  # older style
            cls.generate = cls.__dict__["stream"]  # type: ignore[method-assign]
            cls.stream = ModelBackend.stream  # type: ignore[method-assign]
        if "start" in cls.__dict__:
            cls.start = _marking(cls.__dict__["start"], True)  # type: ignore[method-assign]
        if "aclose" in cls.__dict__:
            cls.aclose = _marking(cls.__dict__["aclose"], False)  # type: ignore[method-assign]

    def __init__(
        self,
        model_name: str,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        local: bool | None = None,
        context_window: int | None = None,
        defaults: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if options:
            accepted = ", ".join(sorted(_declared_options(type(self)))) or "none"
            raise ConfigError(
                f"Unknown option(s) for {self.model_type} models: {', '.join(sorted(options))}. "
                f"Accepted: {accepted}."
            )
        if context_window is not None and (not isinstance(context_window, int) or context_window < 16):
            raise ConfigError(f"context_window must be an integer of at least 16, got {context_window!r}.")
        self.model_name = model_name
        self.endpoint = endpoint
        if endpoint:
            secrets.redact_url(endpoint)  # remembers credentials in the URL, for scrubbing
        self.is_local = self.default_local if local is None else bool(local)
        #: The window set with ``context_window=``, overriding the backend's own figure.
        self.context_window_override = context_window
        #: Generation options used when a request sets none (``defaults`` of ``[[models]]``).
        self.generation_defaults = self._checked_defaults(defaults)
        #: A smaller window the server itself reported (``/models``, or an error saying the
        #: context was exceeded): it wins over both.
        self.learned_context_window: int | None = None
        self.started = False
        self.__api_key = api_key
        secrets.remember(api_key)
        #: Requests of this process streaming from (or queued for) this model right now.
        self.in_flight = 0
        #: Tokens per second of the last answer, set by the executor (``None`` before one).
        self.last_tokens_per_second: float | None = None

    def _checked_defaults(self, defaults: Any) -> dict[str, Any]:
        if defaults is None:
            return {}
        if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
            raise ConfigError(f"defaults must be a table of generation options, got {defaults!r}.")
        known = None if self.request_options is None else {"temperature", "max_tokens"} | self.request_options
        unknown = sorted(set(defaults) - known) if known is not None else []
        if unknown:
            raise ConfigError(
                f"defaults: {', '.join(unknown)} not an option of {self.model_type} models "
                f"(options: {', '.join(sorted(known or ()))})."
            )
        return dict(defaults)

    def with_defaults(self, request: R) -> R:
        """``request`` with this model's :attr:`generation_defaults` where it sets none."""
        defaults = self.generation_defaults
        if not defaults:
            return request
        changes: dict[str, Any] = {"options": {k: v for k, v in defaults.items() if k not in _SAMPLING}}
        changes["options"].update(request.options)
        if request.temperature is None and "temperature" in defaults:
            changes["temperature"] = defaults["temperature"]
        if request.max_tokens is None and "max_tokens" in defaults:
            changes["max_tokens"] = defaults["max_tokens"]
        return attrs.evolve(request, **changes)

    @classmethod
    def accepted_options(cls) -> list[str]:
        """The ``hook_model`` options this backend takes (for ``oblix models --options``)."""
        return sorted(_declared_options(cls))

    def get_key(self) -> str | None:
        """The API key: ``api_key=`` if given, else ``$<key_env_var>``, else ``None``."""
        key = self.__api_key or (os.environ.get(self.key_env_var) if self.key_env_var else None)
        secrets.remember(key)
        return key or None

    @functools.cached_property
    def model_id(self) -> str:
        """``"<type>:<name>"``, e.g. ``"openai:gpt-4o-mini"`` (read on every routing step: kept)."""
        return f"{self.model_type}:{self.model_name}"

    @property
    def default_context_window(self) -> int:
        """The backend's own idea of the window; subclasses override (default 4096)."""
        return 4096

    @property
    def context_window(self) -> int:
        """The model's context window in tokens (``context_window=`` wins, unless the server
        reported a smaller one)."""
        window = self.context_window_override or self.default_context_window
        learned = self.learned_context_window
        return min(window, learned) if learned else window

    @property
    def default_answer_tokens(self) -> int | None:
        """The most tokens this model answers with when a request sets no ``max_tokens``,
        if it stops there itself (``None``: no such bound; the core then keeps 512 tokens of
        the window free for the answer, a quarter of the window at most). A history is
        trimmed to leave this much room, so a backend with shorter answers says so here."""
        return None

    async def start(self) -> None:
        """Validate the model cheaply (it exists, its files or keys are there). Called once, when
        hooked; heavy work (loading weights) belongs in :meth:`prepare`."""
        self.started = True

    async def prepare(self) -> None:
        """Make the model ready to answer (e.g. load its weights); quick once it is.

        The executor awaits it before counting a request's tokens for this model, so an
        in-process model is loaded only when a request is about to use it (``oblix run -m
        cloud`` never loads the local model). :attr:`warming` is true while it runs. The
        default does nothing.
        """

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        """Generate, yielding chunks as they are produced (see the class docstring).

        Closing the iterator early (or cancelling its task) stops generation promptly.
        """
        if not self.started:
            raise self.not_started()
        complete = False
        self.in_flight += 1
        try:
            async with aclosing(self.generate(request)) as chunks:
                async for chunk in chunks:
                    complete = complete or chunk.finish_reason is not None
                    yield chunk
        except ModelError as exc:
            clean = secrets.scrub(str(exc))
            if clean == str(exc):
                raise
            raise _with_message(exc, clean) from None
        finally:
            self.in_flight -= 1
        if not complete and self.end_is_complete:
            yield StreamChunk(finish_reason="stop")

    def not_started(self) -> PermanentModelError:
        """The error :meth:`stream` raises when the model was not started."""
        return PermanentModelError(
            f"{self.model_id} was not started; hook it with hook_model (or await start()).",
            model_id=self.model_id,
        )

    @property
    def streams_plainly(self) -> bool:
        """Whether :meth:`stream` is this base class's own (not overridden): a caller that
        keeps its promises itself (started check, :attr:`in_flight`, secrets scrubbed from
        errors, :attr:`end_is_complete`) may then read :meth:`generate` directly, one async
        generator layer fewer per answer (the executor does)."""
        return type(self).stream is ModelBackend.stream

    def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        """The backend's generator: yield :class:`StreamChunk` objects. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate().")

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``. The default estimates 1 token per 4 characters, rounded up."""
        return max(1, -(-len(text) // 4)) if text else 0

    def count_message_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens that ``messages`` take in a prompt, including a small per-message overhead."""
        if type(self).count_tokens is ModelBackend.count_tokens and "count_tokens" not in self.__dict__:
            # the estimate, as arithmetic
            return sum((len(m.content) + 3) // 4 for m in messages) + 4 * len(messages)
        count = self.count_tokens
        return sum(count(m.content) + 4 for m in messages)

    @property
    def tokenizer_key(self) -> Hashable | None:
        """What this model's token counts depend on: models with equal keys count alike, so
        the request path counts each message once per key (and caches it). ``None``: the
        counts are not cached. The default is the 4-characters estimate's key when
        neither count method is overridden, on the class or on this instance; a backend
        with a real tokenizer overrides it.
        """
        cls = type(self)
        if (
            cls.count_tokens is ModelBackend.count_tokens
            and cls.count_message_tokens is ModelBackend.count_message_tokens
            and "count_tokens" not in self.__dict__
            and "count_message_tokens" not in self.__dict__
        ):
            return ESTIMATED_TOKENS
        return None

    async def aclose(self) -> None:
        """Release the model (unload weights, close HTTP clients)."""
        self.started = False

    # -- signals for routing (safe defaults; backends that know better override them) ----

    @property
    def queue_depth(self) -> int:
        """Requests running on or waiting for this model in this process."""
        return self.in_flight

    @property
    def busy(self) -> bool:
        """Whether the model is serving another request now (a local model then answers slower)."""
        return self.queue_depth > 0

    @property
    def warming(self) -> bool:
        """Whether the model is still loading (cold): it will answer, later than usual."""
        return False

    @property
    def has_health_check(self) -> bool:
        """Whether :meth:`health_check` can tell if the model serves (default: it has an endpoint)."""
        return bool(self.describe().get("endpoint"))

    def health_check(self, timeout: float) -> tuple[bool, str]:
        """A cheap check, without generating, that the model can serve: ``(ok, detail)``.

        Runs in a worker thread and may block up to ``timeout``. The default opens a TCP
        connection to the model's endpoint; HTTP backends may do better (``GET /models``).
        Used to return a cooled-down model to service (see :mod:`oblix_core.models.health`).
        """
        endpoint = str(self.describe().get("endpoint") or "")
        url = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
        port = url.port or {"https": 443, "http": 80}.get(url.scheme)
        if not url.hostname or port is None:
            return False, f"no endpoint to check ({endpoint or 'none'})"
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                return True, f"TCP connect to {url.hostname}:{port}"
        except OSError as exc:
            return False, f"TCP connect to {url.hostname}:{port}: {exc}"

    def describe(self) -> dict[str, Any]:
        """What this backend is and sees, for ``oblix models`` (never secrets)."""
        return {
            "model_id": self.model_id,
            "type": self.model_type,
            "local": self.is_local,
            "endpoint": secrets.redact_url(self.endpoint) if self.endpoint else None,
            "context_window": self.context_window,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id} local={self.is_local}>"


#: :meth:`ModelBackend.prepare` as defined here (it does nothing): the executor does not await
#: a backend's ``prepare()`` when it is this very function (a wrapper set on the class later,
#: or a backend's own, is awaited).
BASE_PREPARE = ModelBackend.prepare

def _with_message(error: ModelError, message: str) -> ModelError:
    """A copy of ``error`` (same class and attributes) with another message."""
    copy = copy_module.copy(error)
    copy.args = (message,)
    return copy


def _marking(method: Any, started: bool) -> Any:
    """Wrap a subclass's ``start`` (``aclose``) so that ``started`` is set after (cleared before) it."""
    if getattr(method, "_oblix_marking", False):
        return method

    @functools.wraps(method)
    async def wrapper(self: ModelBackend) -> None:
        if not started:
            self.started = False
        try:
            await method(self)
        except OblixError as exc:  # e.g. "cannot reach <endpoint with credentials>"
            clean = secrets.scrub(str(exc))
            if clean == str(exc):
                raise
            exc.args = (clean,)
            raise exc from None
        if started:
            self.started = True

    wrapper._oblix_marking = True  # type: ignore[attr-defined]
    return wrapper
