"""Every error a user can cause is an :class:`OblixError` with a message that says what to do."""

from __future__ import annotations


class OblixError(Exception):
    """Base class of all Oblix errors."""


class ConfigError(OblixError):
    """The configuration (arguments, config file, environment) is invalid."""


class PluginError(OblixError):
    """A plugin failed to load or registered something invalid."""


class SessionError(OblixError):
    """Base class of session errors."""


class InvalidSessionIdError(SessionError):
    """A session id is malformed (and could escape the store's root)."""


class SessionNotFoundError(SessionError):
    """No session with that id exists in the store."""


class SessionExistsError(SessionError):
    """A session with that id already exists."""


class SessionCorruptedError(SessionError):
    """A stored session cannot be read; other sessions are unaffected."""


class ExchangeNotStoredError(SessionError):
    """A model answered but the exchange could not be stored; ``answer`` holds the text."""

    def __init__(self, message: str, *, answer: str = "") -> None:
        super().__init__(message)
        self.answer = answer


class InvalidSessionDocumentError(SessionError):
    """A session document (import file) does not have the expected shape."""


class ModelError(OblixError):
    """A model backend failed."""

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id


class TransientModelError(ModelError):
    """A failure that may succeed later (timeout, connection loss, 429, 5xx, truncated stream).

    ``unreachable`` marks failures to reach the model at all (connection refused, DNS,
    TLS, connect or first-byte timeout): those are not retried on the same request (the
    next candidate is tried at once) and cool the model down immediately. ``retry_after``
    is the wait the server asked for (``Retry-After``): the executor's next try of the same
    model waits at least that long (its one retry budget covers every retry of a request).
    """

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        unreachable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, model_id=model_id)
        self.unreachable = unreachable
        self.retry_after = retry_after


class PermanentModelError(ModelError):
    """A failure that retrying cannot fix (bad key, bad request, missing model)."""


class ContextWindowExceededError(PermanentModelError):
    """The server refused the request as longer than the model's context window.

    ``window`` is the window the server reported (``None`` if it did not say); the
    executor then trims to it and tries the model once more.
    """

    def __init__(self, message: str, *, model_id: str | None = None, window: int | None = None) -> None:
        super().__init__(message, model_id=model_id)
        self.window = window


class ModelTimeoutError(TransientModelError):
    """The model did not produce its first token, or finish, in time."""


class StreamInterruptedError(ModelError):
    """A model failed after part of the answer was already delivered to the caller.

    ``partial`` holds the text delivered so far. Oblix does not retry or fall back
    in this case, because the caller has already seen output from this model.
    """

    def __init__(self, message: str, *, model_id: str | None = None, partial: str = "") -> None:
        super().__init__(message, model_id=model_id)
        self.partial = partial


class NoModelAvailableError(OblixError):
    """No hooked model can serve the request (none hooked, all failed, or policy excluded all).

    ``errors`` maps each model tried to its last error; ``attempts`` lists every attempt.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: dict[str, str] | None = None,
        attempts: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message)
        self.errors = errors or {}
        self.attempts = attempts or []


class IdempotencyKeyMismatchError(OblixError):
    """An idempotency key was first used for another request (the server answers 422)."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class IdempotencyInFlightError(OblixError):
    """The first request with this idempotency key is still running (the server answers 409)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyClaimLostError(IdempotencyInFlightError):
    """This try of a keyed request stalled past its lease and a retry took its claim over (409):
    its answer is neither stored nor kept under the key; the retry's is."""
