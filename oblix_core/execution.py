"""The executor: run routed candidates with streaming, timeouts, retries, fallback and cooldown.

Failure semantics, per candidate in routing order:

* Before the first token, a :class:`TransientModelError` (timeouts included) is retried
  on the same model up to ``max_retries`` times with exponential backoff and jitter;
  then, or at once for any other error, the next candidate is tried.
* After the first token has been delivered, a failure is not retried or sent elsewhere
  (the caller has already seen part of this model's answer): it raises
  :class:`StreamInterruptedError` carrying the partial text.
* Each failed attempt counts against the model's circuit breaker; after
  ``failure_threshold`` consecutive failures the model is skipped for ``cooldown``
  seconds (it is still tried if every candidate is cooling down). A success resets it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import attrs

from oblix_core.errors import (
    ConfigError,
    ModelError,
    ModelTimeoutError,
    NoModelAvailableError,
    PermanentModelError,
    StreamInterruptedError,
    TransientModelError,
)
from oblix_core.history import trim_to_window
from oblix_core.models import ChatMessage, GenerationRequest, ModelBackend, StreamChunk


@attrs.frozen
class ExecutionSettings:
    """Retry, timeout and cooldown settings (config file section ``[execution]``)."""

    max_retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    backoff_initial: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    backoff_max: float = attrs.field(default=4.0, validator=attrs.validators.ge(0))
    first_token_timeout: float | None = 120.0
    total_timeout: float | None = 900.0
    failure_threshold: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    cooldown: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionSettings:
        unknown = set(data) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown [execution] settings: {', '.join(sorted(unknown))}.")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Invalid [execution] settings: {exc}") from exc

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, with jitter."""
        return min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class CircuitBreaker:
    """Counts consecutive failures per model and cools a model down past a threshold."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def available(self, model_id: str) -> bool:
        return self._open_until.get(model_id, 0.0) <= time.monotonic()

    def cooling_down(self) -> dict[str, float]:
        """Models cooling down, with the seconds left."""
        now = time.monotonic()
        return {m: round(t - now, 1) for m, t in self._open_until.items() if t > now}

    def record_success(self, model_id: str) -> None:
        with self._lock:
            self._failures.pop(model_id, None)
            self._open_until.pop(model_id, None)

    def record_failure(self, model_id: str) -> None:
        with self._lock:
            count = self._failures.get(model_id, 0) + 1
            self._failures[model_id] = count
            if count >= self.threshold:
                self._open_until[model_id] = time.monotonic() + self.cooldown
                self._failures[model_id] = 0

    def order(self, models: Sequence[ModelBackend]) -> list[ModelBackend]:
        """Available models in their order; cooling ones only if none is available."""
        ready = [m for m in models if self.available(m.model_id)]
        return ready or list(models)


@attrs.define
class Outcome:
    """What the executor produced: the model that answered, its text and metrics."""

    model: ModelBackend | None = None
    text: str = ""
    metrics: dict[str, Any] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)


def _remaining(deadline: float) -> float | None:
    left = deadline - time.monotonic()
    return None if math.isinf(left) else max(left, 0.0)


class Executor:
    """Runs one request over ordered candidates. Stateless per request except the breaker."""

    def __init__(self, settings: ExecutionSettings, breaker: CircuitBreaker) -> None:
        self.settings = settings
        self.breaker = breaker

    async def _guarded(
        self, model: ModelBackend, request: GenerationRequest
    ) -> AsyncGenerator[StreamChunk, None]:
        """The model's stream with first-token and total timeouts applied to each wait."""
        s = self.settings
        start = time.monotonic()
        total_deadline = start + s.total_timeout if s.total_timeout else math.inf
        first_deadline = start + s.first_token_timeout if s.first_token_timeout else math.inf
        first = True
        async with aclosing(model.stream(request)) as chunks:
            iterator = chunks.__aiter__()
            while True:
                deadline = min(first_deadline, total_deadline) if first else total_deadline
                try:
                    with anyio.fail_after(_remaining(deadline)):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    what = "its first token" if first else "its answer"
                    raise ModelTimeoutError(
                        f"{model.model_id} did not produce {what} in time "
                        f"(first_token_timeout={s.first_token_timeout}s, total_timeout={s.total_timeout}s).",
                        model_id=model.model_id,
                    ) from None
                if chunk.text:
                    first = False
                yield chunk

    async def run(
        self,
        candidates: Sequence[ModelBackend],
        messages: Sequence[ChatMessage],
        *,
        temperature: float | None,
        max_tokens: int | None,
        options: dict[str, Any],
        outcome: Outcome,
    ) -> AsyncGenerator[str, None]:
        """Yield answer text as it streams; fill ``outcome`` when done. See module docs."""
        attempts: list[dict[str, Any]] = []
        for model in self.breaker.order(candidates):
            try:
                window = trim_to_window(messages, model, max_tokens)
            except PermanentModelError as exc:
                outcome.errors[model.model_id] = str(exc)
                attempts.append({"model_id": model.model_id, "error": str(exc)})
                continue
            request = GenerationRequest(window, temperature, max_tokens, dict(options))
            attempt = 0
            while True:
                attempt += 1
                started = time.monotonic()
                first_at: float | None = None
                parts: list[str] = []
                usage = None
                try:
                    async for chunk in self._guarded(model, request):
                        if chunk.usage is not None:
                            usage = chunk.usage
                        if chunk.text:
                            if first_at is None:
                                first_at = time.monotonic()
                            parts.append(chunk.text)
                            yield chunk.text
                except Exception as exc:
                    error = (
                        exc
                        if isinstance(exc, ModelError)
                        else PermanentModelError(
                            f"{model.model_id} failed unexpectedly: {type(exc).__name__}: {exc}",
                            model_id=model.model_id,
                        )
                    )
                    self.breaker.record_failure(model.model_id)
                    attempts.append({"model_id": model.model_id, "error": str(error)})
                    if parts:
                        raise StreamInterruptedError(
                            f"{model.model_id} failed after streaming part of its answer: {error}",
                            model_id=model.model_id,
                            partial="".join(parts),
                        ) from exc
                    outcome.errors[model.model_id] = str(error)
                    retry = isinstance(error, TransientModelError) and attempt <= self.settings.max_retries
                    if retry and self.breaker.available(model.model_id):
                        await anyio.sleep(self.settings.backoff(attempt))
                        continue
                    break
                self.breaker.record_success(model.model_id)
                ended = time.monotonic()
                text = "".join(parts)
                outcome.model, outcome.text = model, text
                attempts.append({"model_id": model.model_id, "error": None})
                outcome.metrics = _metrics(model, window, text, usage, started, first_at, ended, attempts)
                return
        detail = "; ".join(f"{m}: {e}" for m, e in outcome.errors.items()) or "no candidate"
        raise NoModelAvailableError(f"No model could answer ({detail}).", errors=dict(outcome.errors))


def _metrics(
    model: ModelBackend,
    window: Sequence[ChatMessage],
    text: str,
    usage: Any,
    started: float,
    first_at: float | None,
    ended: float,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    input_tokens = usage.input_tokens if usage and usage.input_tokens is not None else None
    output_tokens = usage.output_tokens if usage and usage.output_tokens is not None else None
    estimated = input_tokens is None or output_tokens is None
    if input_tokens is None:
        input_tokens = model.count_message_tokens(window)
    if output_tokens is None:
        output_tokens = model.count_tokens(text)
    generating = ended - (first_at or started)
    return {
        "latency_ms": round((ended - started) * 1000, 2),
        "time_to_first_token_ms": round((first_at - started) * 1000, 2) if first_at else None,
        "tokens_per_second": round(output_tokens / generating, 2)
        if generating > 0 and output_tokens
        else None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens_estimated": estimated,
        "history_messages_sent": len(window),
        "attempts": attempts,
    }
