"""Model types, the backend interface every model plugin implements, and request records."""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar

import attrs

from oblix_core.errors import ConfigError


class ModelType(enum.StrEnum):
    """Built-in model types. Plugins may register further types by name."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    LLAMA_CPP = "llama_cpp"
    CUSTOM = "custom"


@attrs.frozen
class ChatMessage:
    """A message as sent to a model."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@attrs.frozen
class GenerationRequest:
    """What a backend is asked to generate."""

    messages: tuple[ChatMessage, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Usage:
    """Token counts reported by the model (``None`` where it reported none)."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@attrs.frozen
class StreamChunk:
    """One piece of a streamed answer. The last chunk may carry ``usage`` and no text."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


class ModelBackend(abc.ABC):
    """A hooked model. One instance serves every concurrent request for that model.

    Subclasses are registered with ``register(model_type, cls)`` from the
    ``oblix_register_models`` hook and constructed by ``OblixClient.hook_model`` as
    ``cls(model_name, endpoint=..., api_key=..., **options)``. Raise
    :class:`~oblix_core.errors.TransientModelError` for failures worth a retry and
    :class:`~oblix_core.errors.PermanentModelError` for the others.
    """

    #: The model type string (``ModelType`` value or a plugin's own).
    model_type: ClassVar[str] = ""
    #: Whether the model runs on this machine (overridable per model with ``local=``).
    default_local: ClassVar[bool] = True

    def __init__(
        self,
        model_name: str,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        local: bool | None = None,
        context_window: int | None = None,
        **options: Any,
    ) -> None:
        self.model_name = model_name
        self.endpoint = endpoint
        self._api_key = api_key
        self.is_local = self.default_local if local is None else bool(local)
        self._context_window = context_window
        self.options = options

    def reject_unknown_options(self) -> None:
        """Raise ConfigError if ``hook_model`` passed options this backend does not take.

        Backends that declare all their options call this at the end of ``__init__``, so a
        typo such as ``n_ctxx=`` is an error instead of being silently ignored.
        """
        if self.options:
            unknown = ", ".join(sorted(self.options))
            raise ConfigError(f"Unknown option(s) for {self.model_type} models: {unknown}.")

    @property
    def model_id(self) -> str:
        """``"<type>:<name>"``, e.g. ``"openai:gpt-4o-mini"``."""
        return f"{self.model_type}:{self.model_name}"

    @property
    def context_window(self) -> int:
        """The model's context window in tokens."""
        return self._context_window or 4096

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Validate and prepare the model (load weights, check it exists). Called once."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        """Generate, yielding chunks as they are produced.

        Closing the iterator early (or cancelling its task) must stop generation promptly.
        """

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``. The default estimates 1 token per 4 characters, rounded up."""
        return max(1, -(-len(text) // 4)) if text else 0

    def count_message_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens that ``messages`` take in a prompt, including a small per-message overhead."""
        return sum(self.count_tokens(m.content) + 4 for m in messages)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model (unload weights, close HTTP clients)."""

    def describe(self) -> dict[str, Any]:
        """What this backend is and sees, for ``oblix models`` (never secrets)."""
        return {
            "model_id": self.model_id,
            "type": self.model_type,
            "local": self.is_local,
            "endpoint": self.endpoint,
            "context_window": self.context_window,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id} local={self.is_local}>"
