"""The executor: run routed candidates with streaming, timeouts, retries, fallback and cooldown.

Failure semantics, per candidate in routing order:

* An answer is complete only on a positive end of stream (a chunk with a
  ``finish_reason``) with some text. A stream that just stops, or an empty answer, is
  a :class:`TransientModelError`.
* Before the first token, a :class:`TransientModelError` (timeouts included) is retried
  on the same model up to ``max_retries`` times with exponential backoff and jitter,
  unless the model could not be reached at all (``unreachable``: refused, DNS, TLS,
  connect or first-byte timeout), which goes to the next candidate at once; any other
  error goes to the next candidate at once.
* After the first token has been delivered, a failure is not retried or sent elsewhere
  (the caller has already seen part of this model's answer): it raises
  :class:`StreamInterruptedError` carrying the partial text and the real cause.
* Each failed attempt counts against the model's health (:mod:`oblix_core.models.health`): a
  model is cooled down at once when it is unreachable or when a transient failure used
  up its retries, and after ``failure_threshold`` consecutive failures of any kind. A
  cooling model is skipped (tried once, without retries, only if every candidate is
  cooling down) until background health checks return it; a success resets it.
* Each candidate receives the history trimmed for its own context window, so failing
  over to a model with a smaller window never sends it more than it can hold.
* A local-only request never starts a non-local backend, whatever the candidates are.

Every error text is scrubbed of known secrets before it is raised or recorded.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import attrs

from oblix_core import fields, secrets
from oblix_core.errors import (
    ConfigError,
    ContextWindowExceededError,
    ModelError,
    ModelTimeoutError,
    NoModelAvailableError,
    PermanentModelError,
    StreamInterruptedError,
    TransientModelError,
)
from oblix_core.models.backend import BASE_PREPARE, ModelBackend, StreamChunk, Usage
from oblix_core.models.health import CircuitBreaker, JsonFile
from oblix_core.request.context import Request
from oblix_core.request.history import Fit, trim_to_window
from oblix_core.request.routing import RoutingPlan, screen
from oblix_core.request.waits import WaitExpired, next_item, on_asyncio
from oblix_core.usage.counts import USAGE_ERROR, checked_usage
from oblix_core.usage.spending import Spending

R = TypeVar("R", bound=Request)
#: The default answer cap: 1,000,000 characters (about 250,000 tokens, beyond every model's
#: output limit today).
DEFAULT_MAX_ANSWER_CHARS = 1_000_000
log = logging.getLogger(__name__)


@attrs.frozen
class ExecutionSettings:
    """Retry, timeout and cooldown settings (config file section ``[execution]``).

    Each field's :class:`~oblix_core.fields.Rule` checks it (in Python and from the config
    file alike); a bad value raises :class:`~oblix_core.fields.InvalidSetting` (a ConfigError).
    """

    max_retries: int = attrs.field(default=2, validator=fields.integer(0))
    backoff_initial: float = attrs.field(default=0.25, validator=fields.seconds(0))
    backoff_max: float = attrs.field(default=4.0, validator=fields.seconds(0))
    first_token_timeout: float | None = attrs.field(
        default=120.0, validator=fields.seconds(0, strict=True).or_none()
    )
    total_timeout: float | None = attrs.field(
        default=900.0, validator=fields.seconds(0, strict=True).or_none()
    )
    failure_threshold: int = attrs.field(default=3, validator=fields.integer(1))
    cooldown: float = attrs.field(default=30.0, validator=fields.seconds(0))
    #: Consecutive passing health checks that return a cooled-down model to service.
    recovery_checks: int = attrs.field(default=2, validator=fields.integer(1))
    #: Seconds between health checks of a cooled-down model.
    probe_interval: float = attrs.field(default=5.0, validator=fields.seconds(0, strict=True))
    #: The most characters one answer may have (text and tool-call arguments together): an
    #: answer that grows past it fails (an endless upstream stream stops there).
    max_answer_chars: int = attrs.field(default=DEFAULT_MAX_ANSWER_CHARS, validator=fields.integer(1))
    #: How long a result sent with an idempotency key is kept, and how long a repeat waits for
    #: the first request with its key before it is told to retry later (seconds).
    idempotency_ttl: float = attrs.field(default=24 * 3600.0, validator=fields.seconds(0, strict=True))
    idempotency_wait: float = attrs.field(default=30.0, validator=fields.seconds(0))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionSettings:
        """Settings from a mapping (``[execution]``); an unknown key or a bad value is a ConfigError."""
        unknown = set(data) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown [execution] settings: {', '.join(sorted(unknown))}.")
        return cls(**data)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, with jitter."""
        return min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@attrs.define  # not frozen: made per request on the hot path (a frozen init is slower); never changed
class Attempt:
    """One try of one model: its error (``None`` on success) and how long it took."""

    model_id: str
    error: str | None
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "error": self.error, "elapsed_ms": self.elapsed_ms}


@attrs.define  # not frozen: made per request on the hot path (a frozen init is slower); never changed
class Attempting:
    """The executor's event before each try of a model: who is about to answer."""

    model: ModelBackend


@attrs.define  # not frozen: made per request on the hot path (a frozen init is slower); never changed
class Done:
    """The executor's last event: the model that answered, its text, metrics and attempts.

    ``tool_calls`` holds the tool calls the model made (OpenAI's shape), if any.
    """

    model: ModelBackend
    text: str
    metrics: dict[str, Any]
    attempts: tuple[Attempt, ...]
    tool_calls: tuple[dict[str, Any], ...] = ()


class _Answer:
    """What one attempt has produced so far (a plain class: one is made per try)."""

    __slots__ = ("calls", "finish", "first_at", "info", "overflow", "parts", "size", "started", "usage")

    def __init__(self, started: float) -> None:
        self.started = started
        self.parts: list[str] = []
        self.first_at: float | None = None
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.info: dict[str, Any] = {}
        self.calls: dict[int, dict[str, Any]] = {}
        #: Characters of text and tool-call arguments taken in so far (the answer cap counts them).
        self.size = 0
        #: Output tokens of the chunk refused at the answer cap (produced and paid for, never kept).
        self.overflow = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls streamed so far, their deltas joined (OpenAI's message shape)."""
        return [self.calls[i] for i in sorted(self.calls)]

    def add(self, chunk: StreamChunk, size: int) -> None:
        """Take in everything but the text of ``chunk`` (``size``: its :func:`_size`)."""
        self.usage = chunk.usage or self.usage
        self.finish = chunk.finish_reason or self.finish
        if chunk.info:
            self.info.update(chunk.info)
        self.size += size
        for delta in chunk.tool_calls or ():
            call = self.calls.setdefault(
                int(delta.get("index", len(self.calls))),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = delta.get("id") or call["id"]
            call["type"] = delta.get("type") or call["type"]
            function = delta.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""


#: Characters a tool call counts for the answer cap besides its strings (what keeping it costs),
#: so that an endless stream of new, empty tool calls is capped too.
CALL_CHARS = 64


def _size(chunk: StreamChunk, calls: Mapping[int, Any]) -> int:
    """Characters ``chunk`` adds to an answer: its text, and its tool calls' names, arguments,
    ids and types, plus :data:`CALL_CHARS` for each call not among ``calls`` yet."""
    size = len(chunk.text)
    for delta in chunk.tool_calls or ():
        function = delta.get("function") or {}
        size += len(function.get("arguments") or "") + len(function.get("name") or "")
        size += len(str(delta.get("id") or "")) + len(str(delta.get("type") or ""))
        size += CALL_CHARS if delta.get("index") not in calls else 0
    return size


def utf8_safe(text: str) -> str:
    """``text`` that UTF-8 can store: surrogate pairs split across chunks are joined, lone
    surrogates (half an emoji from a server that split one) become U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _as_model_error(model: ModelBackend, exc: Exception) -> ModelError:
    """``exc`` as a ModelError with every known secret scrubbed from its text."""
    if isinstance(exc, ModelError):
        error: ModelError = exc
    else:
        error = PermanentModelError(
            f"{model.model_id} failed unexpectedly: {type(exc).__name__}: {exc}", model_id=model.model_id
        )
    clean = secrets.scrub(str(error))
    if clean != str(error):
        error.args = (clean,)
    return error


class Executor:
    """Runs one request over ordered candidates. Stateless per request except the breaker."""

    def __init__(self, settings: ExecutionSettings, breaker: CircuitBreaker) -> None:
        self.settings = settings
        self.breaker = breaker

    @property
    def readings(self) -> JsonFile | None:
        """Where the agents' last readings are kept between processes (``None``: nowhere)."""
        return self.breaker.readings

    async def watch(self, models: Sequence[ModelBackend]) -> None:
        """Before each routing: learn the hooked ``models`` and take the health other processes
        recorded for them (read in a worker thread, and only when the shared store changed)."""
        breaker = self.breaker
        breaker.watch(models)
        if breaker.shares_health and breaker.stale():
            await anyio.to_thread.run_sync(breaker.sync)

    def screen(
        self, plan: RoutingPlan, models: Sequence[ModelBackend], request: Request, **kw: Any
    ) -> RoutingPlan:
        """``plan`` screened against the models' health and windows (:func:`routing.screen`,
        which also computes each candidate's fit once): what :meth:`run` then runs as planned."""
        return screen(plan, models, request.messages, request.max_tokens, self.breaker, **kw)

    async def run(
        self,
        candidates: Sequence[ModelBackend],
        request: Request,
        fits: Mapping[str, Fit] | None = None,
        spending: Spending | None = None,
    ) -> AsyncGenerator[str | Attempting | Done, None]:
        """Yield :class:`Attempting` before each try, answer text as it streams, then one :class:`Done`.
        Candidates run in the order given (a screened plan's: see :meth:`screen`), each sending its
        planned messages (``fits``, :func:`_planned`). A try's waits for chunks are timed by
        :func:`next_item`; ``spending`` hears of text handed on and of unfinished answers."""
        attempts: list[Attempt] = []
        s, native = self.settings, on_asyncio()
        for model in candidates:
            prepared = await _prepared(model, request, fits, attempts)
            if prepared is None:
                continue
            (own, sent), tries, refit = prepared, 0, False
            while sent is not None:
                tries += 1
                answer, first, held = _Answer(time.monotonic()), True, ""
                first_by, total_by = _deadlines(s, answer.started)
                yield Attempting(model)
                try:
                    chunks, plain = _source(model, sent)
                    try:
                        iterator = chunks.__aiter__()
                        while True:
                            try:
                                chunk = await next_item(iterator, first_by if first else total_by, native)
                            except StopAsyncIteration:
                                break
                            except WaitExpired:
                                raise _timed_out(model, s, first) from None
                            first = first and not chunk.text
                            text, held = _take(model, answer, chunk, held, s.max_answer_chars)
                            if text:
                                _reader(spending, True)
                                yield text
                                _reader(spending, False)
                    finally:
                        await _closed(chunks, model, plain)
                    if held:  # a lone high surrogate at the very end
                        _reader(spending, True)
                        yield _flush(answer, held)
                        _reader(spending, False)
                    _check_end(model, answer, plain)
                except Exception as exc:
                    _unfinished(spending, model, sent, answer, attempts, exc)
                    sent, refit = await self._failed(model, own, sent, answer, exc, tries, refit, attempts)
                    continue
                except BaseException:  # the reader closed the stream or was cancelled
                    _unfinished(spending, model, sent, answer, attempts, None)
                    raise
                yield self._done(model, sent, answer, attempts, (fits or {}).get(model.model_id))
                return
        raise _no_model(attempts)

    async def _failed(
        self,
        model: ModelBackend,
        own: Request,
        trimmed: Request,
        answer: _Answer,
        exc: Exception,
        tries: int,
        retrimmed: bool,
        attempts: list[Attempt],
    ) -> tuple[Request | None, bool]:
        """After a failed try of ``model``: the request to try it with again (a retry after a
        backoff, or refitted once to a smaller window the server reported) and whether it was
        refitted, or ``None`` to go on to the next candidate. Once text was delivered, raises
        :class:`StreamInterruptedError` (not retried, not sent elsewhere)."""
        error = _as_model_error(model, exc)
        attempts.append(Attempt(model.model_id, str(error), _elapsed_ms(answer.started)))
        retry = not answer.parts and self._retry(error, tries, model)
        gave_up = isinstance(error, TransientModelError) and not retry
        self.breaker.record_failure(model.model_id, at_once=gave_up, error=str(error))
        if not answer.parts and not retrimmed and _learned_smaller_window(model, error):
            try:  # the server said how long it can take: fit it and try once more
                return attrs.evolve(own, messages=trim_to_window(own.messages, model, own.max_tokens)), True
            except PermanentModelError:
                return None, True
        if answer.parts:
            raise _interrupted(model, error, answer.text) from None
        if retry:
            await anyio.sleep(max(self.settings.backoff(tries), _asked_wait(error)))
            return trimmed, retrimmed
        return None, retrimmed

    def _done(
        self, model: ModelBackend, request: Request, answer: _Answer, attempts: list[Attempt], fit: Fit | None
    ) -> Done:
        """A successful try: the model's health told, its speed kept, the :class:`Done` event."""
        self.breaker.record_success(model.model_id)
        attempts.append(Attempt(model.model_id, None, _elapsed_ms(answer.started)))
        metrics = _metrics(model, request, answer, attempts, fit)
        model.last_tokens_per_second = metrics["tokens_per_second"]
        calls = tuple(answer.tool_calls) if answer.calls else ()
        return Done(model, answer.text, metrics, tuple(attempts), calls)

    def _retry(self, error: ModelError, tries: int, model: ModelBackend) -> bool:
        """Whether to try ``model`` again on this request."""
        return (
            isinstance(error, TransientModelError)
            and not error.unreachable
            and tries <= self.settings.max_retries
            and self.breaker.available(model.model_id)
        )


async def _prepared(
    model: ModelBackend, request: Request, fits: Mapping[str, Fit] | None, attempts: list[Attempt]
) -> tuple[Request, Request | None] | None:
    """``model`` made ready (:meth:`~ModelBackend.prepare`), and ``request`` with its generation
    defaults and then its planned messages; ``None`` (the failure added to ``attempts``) when it
    cannot load or the prompt cannot fit it."""
    try:
        prepare = model.prepare
        if getattr(prepare, "__func__", None) is not BASE_PREPARE:  # the base's does nothing
            await prepare()
        own = model.with_defaults(request)  # the model's generation defaults, where unset
        return own, _planned(model, own, (fits or {}).get(model.model_id))
    except (PermanentModelError, ConfigError) as exc:
        attempts.append(Attempt(model.model_id, secrets.scrub(str(exc)), 0.0))
        return None


def _source(model: ModelBackend, request: Request) -> tuple[AsyncGenerator[StreamChunk, None], bool]:
    """The chunks of ``model``'s answer, and whether they come from its ``generate`` directly
    (its ``stream`` not overridden; the caller then keeps ``stream``'s promises: started checked
    here, :attr:`in_flight` counted here and released by the caller, an end marked complete
    per ``end_is_complete``; errors are scrubbed by :func:`_as_model_error`, which every error of
    an attempt goes through). A local-only request never starts a non-local model."""
    if request.local_only and not model.is_local:
        raise PermanentModelError(
            f"{model.model_id} is not local and this request is local-only; it was not started.",
            model_id=model.model_id,
        )
    if not model.streams_plainly:
        return model.stream(request), False
    if not model.started:
        raise model.not_started()
    chunks = model.generate(request)
    model.in_flight += 1
    return chunks, True


async def _closed(chunks: AsyncGenerator[StreamChunk, None], model: ModelBackend, plain: bool) -> None:
    """``chunks`` closed (as ``aclosing`` would), and a plain source's :attr:`in_flight` count
    given back (:func:`_source`) whatever closing raises."""
    try:
        await chunks.aclose()
    finally:
        if plain:
            model.in_flight -= 1


def _deadlines(s: ExecutionSettings, start: float) -> tuple[float, float]:
    """The first-token and total deadlines of a try started at ``start`` (``time.monotonic()``,
    the clock :func:`~oblix_core.request.waits.next_item` takes)."""
    total = start + s.total_timeout if s.total_timeout else math.inf
    return (min(start + s.first_token_timeout, total) if s.first_token_timeout else total), total


def _take(model: ModelBackend, answer: _Answer, chunk: StreamChunk, held: str, cap: int) -> tuple[str, str]:
    """``chunk`` taken into ``answer``: the text to hand on now (UTF-8 safe), and a high surrogate
    held back because it may pair with the next chunk's first character."""
    size = _size(chunk, answer.calls) if chunk.tool_calls else len(chunk.text)
    if answer.size + size > cap:
        calls = (str((d.get("function") or {}).get("arguments") or "") for d in chunk.tool_calls or ())
        answer.overflow = sum(map(model.count_tokens, (chunk.text, *calls)))  # counted in its record
        raise _too_long(model, cap)
    answer.add(chunk, size)
    text = held + chunk.text if held else chunk.text
    held = text[-1] if text and "\ud800" <= text[-1] <= "\udbff" else ""
    text = utf8_safe(text[: len(text) - len(held)])
    if text:
        answer.first_at = answer.first_at or time.monotonic()
        answer.parts.append(text)
    return text, held


def _timed_out(model: ModelBackend, s: ExecutionSettings, first: bool) -> ModelTimeoutError:
    what = "its first token" if first else "its answer"
    return ModelTimeoutError(
        f"{model.model_id} did not produce {what} in time "
        f"(first_token_timeout={s.first_token_timeout}s, total_timeout={s.total_timeout}s).",
        model_id=model.model_id,
    )


def _flush(answer: _Answer, held: str) -> str:
    """A high surrogate held back to the end, taken into ``answer`` as the text to hand on."""
    answer.parts.append(utf8_safe(held))
    return answer.parts[-1]


def _check_end(model: ModelBackend, answer: _Answer, plain: bool = False) -> None:
    """Raise :class:`TransientModelError` unless the answer ended positively with some content.
    ``plain``: read from ``generate`` directly (:func:`_source`), whose normal end is a positive
    one when the backend says so (``end_is_complete``, as ``ModelBackend.stream`` marks it)."""
    if plain and answer.finish is None and model.end_is_complete:
        answer.finish = "stop"
    if answer.finish is None:
        raise TransientModelError(
            f"{model.model_id}: the answer stream ended without a finish reason (truncated).",
            model_id=model.model_id,
        )
    if not answer.text.strip() and not answer.calls:
        raise TransientModelError(f"{model.model_id} returned an empty answer.", model_id=model.model_id)


def _too_long(model: ModelBackend, cap: int) -> PermanentModelError:
    """The error of an answer that grew past ``cap`` characters."""
    return PermanentModelError(
        f"{model.model_id}: the answer grew past max_answer_chars={cap} characters and was stopped "
        "(raise [execution] max_answer_chars for longer answers).",
        model_id=model.model_id,
    )


def _asked_wait(error: ModelError) -> float:
    """The wait the server asked for (``Retry-After``) before the next try, capped at 60 s."""
    wait = getattr(error, "retry_after", None)
    return min(float(wait), 60.0) if isinstance(wait, int | float) and wait > 0 else 0.0


def _reader(spending: Spending | None, waiting: bool) -> None:
    if spending is not None:
        spending.reader(waiting)


def _unfinished(
    spending: Spending | None,
    model: ModelBackend,
    request: Request,
    answer: _Answer,
    attempts: Sequence[Attempt],
    exc: Exception | None,
) -> None:
    """After a try ended without completing: what it produced is reported as spent, when it
    produced something (:func:`_report`): interrupted by ``exc``, or (``None``) abandoned by the
    reader. Something is text, tool calls, a chunk refused at the answer cap, or a count the
    provider reported (it charged for the try even if nothing else came)."""
    if not (answer.parts or answer.calls or answer.overflow or answer.usage is not None):
        return
    if exc is not None:
        _report(spending, model, request, answer, attempts, f"interrupted: {_as_model_error(model, exc)}")
    else:
        why = "abandoned: the reader stopped before the end of the answer"
        _report(spending, model, request, answer, attempts, why)


def _report(
    spending: Spending | None,
    model: ModelBackend,
    request: Request,
    answer: _Answer,
    attempts: Sequence[Attempt],
    why: str,
) -> None:
    """Tell ``spending`` what a cloud model's unfinished answer used (tokens estimated where the
    model gave no count); never raises: the answer's own outcome goes on."""
    if spending is None or model.is_local:
        return
    try:
        metrics = _metrics(model, request, answer, attempts, None)
        metrics["tokens_estimated"] = metrics["tokens_estimated"] or answer.finish is None
        if answer.overflow and answer.usage is None:  # the refused chunk was produced too
            metrics["output_tokens"] += answer.overflow
        spending.spent(model, metrics, why)
    except Exception as exc:
        log.warning("%s: the usage of an unfinished answer was not recorded: %s", model.model_id, exc)


def _planned(model: ModelBackend, request: R, fit: Fit | None) -> R:
    """``request`` with the messages planned for ``model``, trimmed again only if the plan no
    longer holds for it; raises :class:`PermanentModelError` if the prompt cannot fit."""
    if fit is not None and fit.holds_for(model, request.max_tokens):
        if len(fit.messages) == len(request.messages):  # nothing trimmed: the request as it is
            request.messages = fit.messages  # the same messages (fit.input_tokens knows them)
            return request
        return attrs.evolve(request, messages=fit.messages)
    return attrs.evolve(request, messages=trim_to_window(request.messages, model, request.max_tokens))


def _learned_smaller_window(model: ModelBackend, error: ModelError) -> bool:
    """Teach ``model`` the window a context-exceeded refusal reported; ``True`` if it shrank."""
    window = error.window if isinstance(error, ContextWindowExceededError) else None
    if not window or window >= model.context_window:
        return False
    model.learned_context_window = window
    return True


def _interrupted(model: ModelBackend, error: ModelError, partial: str) -> StreamInterruptedError:
    """A failure after part of the answer was delivered: not retried, not sent elsewhere."""
    return StreamInterruptedError(
        f"{model.model_id} failed after streaming part of its answer: {error}",
        model_id=model.model_id,
        partial=partial,
    )


def _elapsed_ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


def _no_model(attempts: list[Attempt]) -> NoModelAvailableError:
    errors = {a.model_id: a.error for a in attempts if a.error}
    detail = "; ".join(e if e.startswith(f"{m}:") else f"{m}: {e}" for m, e in errors.items())
    return NoModelAvailableError(
        f"No model could answer ({detail or 'no candidate'}).",
        errors=dict(errors),
        attempts=[a.to_dict() for a in attempts],
    )


def _metrics(
    model: ModelBackend, request: Request, answer: _Answer, attempts: Sequence[Attempt], fit: Fit | None
) -> dict[str, Any]:
    usage, problem = checked_usage(answer.usage)  # whatever the backend: no invalid count counts
    input_tokens = usage.input_tokens if usage and usage.input_tokens is not None else None
    output_tokens = usage.output_tokens if usage and usage.output_tokens is not None else None
    estimated = input_tokens is None or output_tokens is None
    if input_tokens is None:
        messages = request.messages
        input_tokens = fit.input_tokens(model, messages) if fit else model.count_message_tokens(messages)
    if output_tokens is None:
        output_tokens = model.count_tokens(answer.text)
    ended = time.monotonic()
    generating = ended - (answer.first_at or answer.started)
    first_at, info = answer.first_at, answer.info
    metrics = {
        "latency_ms": round((ended - answer.started) * 1000, 2),
        "time_to_first_token_ms": round((first_at - answer.started) * 1000, 2) if first_at else None,
        "tokens_per_second": round(output_tokens / generating, 2)
        if generating > 0 and output_tokens
        else None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": usage.cached_input_tokens if usage else None,
        "tokens_estimated": estimated,
        "finish_reason": answer.finish,
        "history_messages_sent": len(request.messages),
        "attempts": [a.to_dict() for a in attempts],
    }
    if info:
        metrics.update(info)
    if problem or info.get(USAGE_ERROR):  # named invalid counts (else none: no merge)
        metrics.update(_usage_error(info.get(USAGE_ERROR), problem))
    return metrics


def _usage_error(*notes: str | None) -> dict[str, Any]:
    """The metrics entry naming invalid counts (none when every count was valid)."""
    text = "; ".join(dict.fromkeys(str(n) for n in notes if n))
    return {USAGE_ERROR: text} if text else {}
