"""Turning a session into model messages, trimmed to a model's context window by tokens."""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Hashable, Sequence

import attrs

from oblix_core.errors import PermanentModelError
from oblix_core.models.backend import ESTIMATED_TOKENS, ChatMessage, ModelBackend
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.sessions.store import SessionStore

#: Tokens kept free for the answer when the request does not set ``max_tokens``.
DEFAULT_ANSWER_RESERVE = 512


#: Messages read in the first page of history.
FIRST_PAGE = 64
#: How far the estimate of the history read must exceed the budget (estimates run low).
MARGIN = 1.25


def _estimates(messages: Sequence[Message]) -> list[int]:
    """Each message's cheap token estimate (4 characters a token, 4 tokens of overhead)."""
    return [len(m.content) // 4 + 4 for m in messages]


def estimated_tokens(messages: Sequence[Message]) -> int:
    """The messages' cheap token estimate, summed."""
    return sum(_estimates(messages))


def marks(messages: Sequence[Message], start: int = 0) -> tuple[int, ...]:
    """Estimated tokens before each of ``messages`` and after the last, from ``start``
    (``len(messages) + 1`` running totals)."""
    return tuple(itertools.accumulate(_estimates(messages), initial=start))


def recent_start(running: Sequence[int], wanted: float) -> int:
    """Where the history a request uses starts, given :func:`marks` of messages read from the
    end of a session: the shortest suffix whose estimate reaches ``wanted``, else all of them.

    The same rule wherever the history comes from (a warm tail holding more, a cold read, a
    store read whole), so what is sent does not depend on how far back a read reached: stored
    system messages, kept whatever their place, included.
    """
    if running[-1] - running[0] <= wanted:  # the usual session: all of it
        return 0
    return max(0, bisect.bisect_right(running, running[-1] - wanted) - 1)


def read_tail(store: SessionStore, session_id: str, budget_tokens: int) -> SessionRecord:
    """The session with the recent history that ``budget_tokens`` can use (:func:`recent_start`).

    Reads a first page from the end of the session; if its estimated tokens do not
    cover the budget (with :data:`MARGIN`), reads again as many messages as the
    first page's average size says are needed (at least twice as many). A request
    thus reads about what the largest window can hold, however long the session is.
    Runs in a worker thread (the store may block).
    """
    size, wanted = FIRST_PAGE, MARGIN * budget_tokens
    while True:
        record = store.load_recent(session_id, size)
        running = marks(record.messages)
        if len(record.messages) < size or running[-1] >= wanted:
            start = recent_start(running, wanted)
            return attrs.evolve(record, messages=record.messages[start:]) if start else record
        per_message = max(1.0, running[-1] / len(record.messages))
        size = max(2 * size, math.ceil(wanted / per_message * 1.1))


def session_messages(
    session: SessionRecord,
    prompt: str,
    system: str | None = None,
    history: Sequence[ChatMessage] | None = None,
) -> list[ChatMessage]:
    """The conversation plus the new prompt, after an optional system prompt.

    A non-empty session context becomes a system message too. ``history``: the
    session's messages already as chat messages (the warm history keeps them so).
    """
    messages = [ChatMessage("system", system)] if system else []
    if session.context:
        context = json.dumps(session.context, ensure_ascii=False, sort_keys=True)
        messages.append(ChatMessage("system", f"Conversation context: {context}"))
    if history is None:
        history = chat_messages(session.messages)
    messages.extend(history)
    messages.append(ChatMessage("user", prompt))
    return messages


def chat_messages(messages: Sequence[Message]) -> tuple[ChatMessage, ...]:
    """Stored messages as chat messages."""
    return tuple([ChatMessage(m.role, m.content) for m in messages])


#: Token counts of single messages, by (tokenizer key, role, content): a message is counted
#: once per tokenizer however many requests send it. Cleared whole when full.
_COUNTS: dict[tuple[Hashable, str, str], int] = {}
MAX_CACHED_COUNTS = 200_000


def message_tokens(model: ModelBackend, message: ChatMessage, key: Hashable | None) -> int:
    """``model.count_message_tokens([message])``, cached under the model's tokenizer ``key``."""
    if key is None or message.tool_calls or message.tool_call_id is not None:
        return model.count_message_tokens([message])
    entry = (key, message.role, message.content)
    count = _COUNTS.get(entry)
    if count is None:
        count = model.count_message_tokens([message])
        if len(_COUNTS) >= MAX_CACHED_COUNTS:
            _COUNTS.clear()
        _COUNTS[entry] = count
    return count


def _costs(model: ModelBackend, history: Sequence[ChatMessage], key: Hashable | None) -> Sequence[int]:
    """Each message's tokens (:func:`message_tokens`, its cache read inline: the hot loop)."""
    if key is None:
        return [model.count_message_tokens([m]) for m in history]
    if key == ESTIMATED_TOKENS:  # ModelBackend's own counts, as arithmetic: no lookup needed
        return [(len(m.content) + 3) // 4 + 4 for m in history]  # (faster than map with attrgetter)
    get = _COUNTS.get
    costs = [get((key, m.role, m.content)) if m.tool_calls is None else None for m in history]
    for i, cost in enumerate(costs):
        if cost is None:
            costs[i] = message_tokens(model, history[i], key)
    return costs  # type: ignore[return-value]  # every None was filled


def answer_reserve(window: int, max_tokens: int | None, usual: int | None = None) -> int:
    """Tokens kept free for the answer: ``max_tokens``, else a quarter of the window up to the
    model's own bound on answers (``usual``, :attr:`ModelBackend.default_answer_tokens`) or 512."""
    return max_tokens if max_tokens else min(usual or DEFAULT_ANSWER_RESERVE, window // 4)


@attrs.define  # not frozen: made per request on the hot path (a frozen init is slower); never changed
class Fit:
    """How a request's messages fit one model's window: counted once, used by routing and
    the executor alike (see :func:`fit_to_window`)."""

    #: The messages to send: system messages, as much recent history as fits, the prompt.
    messages: tuple[ChatMessage, ...]
    window: int
    #: Tokens of every message given plus the answer reserve.
    needed: int
    history_messages: int
    history_sent: int
    max_tokens: int | None
    #: The model's tokenizer key when counted (``None``: counts not cacheable).
    tokenizer: Hashable | None
    #: Tokens of ``messages`` as counted message by message.
    sent_tokens: int = 0
    #: Why the model cannot take the request (the prompt alone is too long), or ``None``.
    problem: str | None = None

    def describe(self) -> dict[str, object]:
        """The ``context`` entry of a routing decision."""
        return {
            "window": self.window,
            "needed": self.needed,
            "fits": self.needed <= self.window,
            "history_messages": self.history_messages,
            "history_sent": self.history_sent,
        }

    def input_tokens(self, model: ModelBackend, messages: Sequence[ChatMessage]) -> int:
        """``model.count_message_tokens(messages)``, known already when ``messages`` are this fit's
        and the model's counts add up message by message (the default estimate)."""
        if messages is self.messages and self.tokenizer == ESTIMATED_TOKENS:
            return self.sent_tokens
        return model.count_message_tokens(messages)

    def holds_for(self, model: ModelBackend, max_tokens: int | None) -> bool:
        """Whether this fit, counted for ``model`` when the request was planned, is still its fit:
        the same answer reserve, and the model's window and tokenizer unchanged since (loading
        weights in ``prepare()`` can change them, as can a smaller window learned meanwhile)."""
        return (
            self.problem is None
            and self.max_tokens == max_tokens
            and self.window == model.context_window
            and self.tokenizer == model.tokenizer_key
        )


class CountedHistory(tuple[ChatMessage, ...]):
    """A session's recent history as chat messages that keeps each message's token count per
    tokenizer (:meth:`costs`) as the history grows: the warm history extends it by each turn's
    new messages (:meth:`extended`), so a request counts only what is new, not the whole history.

    A tuple (it compares and slices as one); ``has_system`` says whether it holds a system
    message (a fit then sorts the messages itself, see :func:`fit_to_window`).
    """

    counts: dict[Hashable, tuple[int, ...]]
    has_system: bool
    #: A :meth:`suffix`'s whole history and where it starts in it (its counts are kept there).
    whole: tuple[CountedHistory, int] | None

    def __new__(
        cls,
        messages: Sequence[ChatMessage],
        counts: dict[Hashable, tuple[int, ...]] | None = None,
        has_system: bool | None = None,
    ) -> CountedHistory:
        history = super().__new__(cls, messages)
        #: Per tokenizer key, the counts of this history's first messages (all, once asked).
        history.counts = counts if counts is not None else {}
        history.has_system = (
            has_system if has_system is not None else any(m.role == "system" for m in messages)
        )
        history.whole = None
        return history

    def extended(self, new: Sequence[ChatMessage]) -> CountedHistory:
        """This history with ``new`` messages after it (the counts so far kept, the rest counted
        when asked)."""
        history = tuple.__new__(CountedHistory, (*self, *new))  # not __new__: it would scan every message
        history.counts = dict(self.counts)
        history.has_system = self.has_system or "system" in [m.role for m in new]
        history.whole = None
        return history

    def without_first(self, count: int) -> CountedHistory:
        """This history less its ``count`` oldest messages (a history of its own)."""
        counts = {key: costs[count:] for key, costs in self.counts.items()}
        return CountedHistory(self[count:], counts, self.has_system)

    def suffix(self, start: int) -> CountedHistory:
        """This history from message ``start`` on, counting through this one: what a request
        counts is kept here for the next request (:meth:`without_first` would keep it apart)."""
        if not start:
            return self
        view = tuple.__new__(CountedHistory, self[start:])
        view.counts = {}
        view.has_system = self.has_system and "system" in [m.role for m in view]
        view.whole = (self, start)
        return view

    def costs(self, model: ModelBackend, key: Hashable) -> tuple[int, ...]:
        """Each message's tokens for ``model`` (``key``: its tokenizer key, not ``None``),
        counting only the messages not counted before."""
        if self.whole is not None:
            history, start = self.whole
            return history.costs(model, key)[start:]
        held = self.counts.get(key, ())
        if len(held) < len(self):
            held = (*held, *_costs(model, self[len(held) :], key))
            self.counts[key] = held
        return held


def fit_to_window(
    messages: Sequence[ChatMessage],
    model: ModelBackend,
    max_tokens: int | None,
    *,
    window: int | None = None,
    tokenizer: Hashable | None = None,
    history: tuple[int, CountedHistory] | None = None,
) -> Fit:
    """Keep system messages and the last (prompt) message, then as much recent history as fits.

    The budget is the model's context window minus the tokens reserved for the answer
    (``max_tokens``, or a quarter of the window up to 512). History is dropped whole
    messages at a time, oldest first. Each message is counted once (cached per
    tokenizer). If even the prompt does not fit, the fit says why (``problem``), so that
    a model with a larger window can be tried. ``window``, ``tokenizer``: the model's, if read
    already. ``history``: the index and :class:`CountedHistory` of the history in ``messages``
    (built as system messages, that history, the prompt; unchanged since): its counts are used.
    """
    window = model.context_window if window is None else window
    key = model.tokenizer_key if tokenizer is None else tokenizer
    reserve = answer_reserve(window, max_tokens, None if max_tokens else model.default_answer_tokens)
    if not messages:
        return Fit((), window, reserve, 0, 0, max_tokens, key)
    prompt = messages[-1]
    chat: Sequence[ChatMessage]
    costs: Sequence[int]
    if history is not None and key is not None and not history[1].has_system:
        system, chat = messages[: history[0]], history[1]
        costs = history[1].costs(model, key)
    else:
        system, chat = _split(messages)
        costs = _costs(model, chat, key)
    fixed = model.count_message_tokens([*system, prompt])
    total = sum(costs)
    needed = fixed + total + reserve
    budget = window - reserve - fixed
    if budget < 0:
        problem = (
            f"The prompt needs {fixed} tokens plus {reserve} for the answer, more than the "
            f"{window}-token context window of {model.model_id}. Shorten it or lower max_tokens."
        )
        return Fit((), window, needed, len(chat), 0, max_tokens, key, problem=problem)
    first = len(chat)
    if total <= budget:  # all of it fits (the common case): no message by message walk
        first, budget = 0, budget - total
    while first > 0 and costs[first - 1] <= budget:
        first -= 1
        budget -= costs[first]
    kept = (*system, *chat[first:], prompt)
    sent = needed - reserve - sum(costs[:first])
    return Fit(kept, window, needed, len(chat), len(chat) - first, max_tokens, key, sent)


def _split(messages: Sequence[ChatMessage]) -> tuple[Sequence[ChatMessage], Sequence[ChatMessage]]:
    """The system messages before the prompt, and the others (history), each in order."""
    head = messages[:-1]
    roles = [m.role for m in head]
    leading = 0
    while leading < len(roles) and roles[leading] == "system":
        leading += 1
    if roles.count("system") == leading:  # system messages first, as session_messages puts them
        return head[:leading], head[leading:]
    return [m for m in head if m.role == "system"], [m for m in head if m.role != "system"]


def trim_to_window(
    messages: Sequence[ChatMessage], model: ModelBackend, max_tokens: int | None
) -> tuple[ChatMessage, ...]:
    """:func:`fit_to_window`'s messages; raises :class:`PermanentModelError` if even the
    prompt does not fit, so that a model with a larger window can be tried."""
    fit = fit_to_window(messages, model, max_tokens)
    if fit.problem is not None:
        raise PermanentModelError(fit.problem, model_id=model.model_id)
    return fit.messages
