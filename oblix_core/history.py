"""Turning a session into model messages, trimmed to a model's context window by tokens."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from oblix_core.errors import PermanentModelError
from oblix_core.models import ChatMessage, ModelBackend
from oblix_core.records import Message, SessionRecord
from oblix_core.stores import SessionStore

#: Tokens kept free for the answer when the request does not set ``max_tokens``.
DEFAULT_ANSWER_RESERVE = 512


#: Messages read in the first page of history.
FIRST_PAGE = 64
#: How far the estimate of the history read must exceed the budget (estimates run low).
MARGIN = 1.25


def estimated_tokens(messages: Sequence[Message]) -> int:
    """A cheap token estimate (4 characters a token, 4 tokens of overhead per message)."""
    return sum(len(m.content) // 4 + 4 for m in messages)


def read_tail(store: SessionStore, session_id: str, budget_tokens: int) -> SessionRecord:
    """The session with as much recent history as ``budget_tokens`` can use.

    Reads a first page from the end of the session; if its estimated tokens do not
    cover the budget (with :data:`MARGIN`), reads again as many messages as the
    first page's average size says are needed (at least twice as many). A request
    thus reads about what the largest window can hold, however long the session is.
    Runs in a worker thread (the store may block).
    """
    size, wanted = FIRST_PAGE, MARGIN * budget_tokens
    while True:
        record = store.load_recent(session_id, size)
        estimate = estimated_tokens(record.messages)
        if len(record.messages) < size or estimate >= wanted:
            return record
        per_message = max(1.0, estimate / len(record.messages))
        size = max(2 * size, math.ceil(wanted / per_message * 1.1))


def session_messages(session: SessionRecord, prompt: str, system: str | None = None) -> list[ChatMessage]:
    """The conversation plus the new prompt, after an optional system prompt.

    A non-empty session context becomes a system message too.
    """
    messages = [ChatMessage("system", system)] if system else []
    if session.context:
        context = json.dumps(session.context, ensure_ascii=False, sort_keys=True)
        messages.append(ChatMessage("system", f"Conversation context: {context}"))
    messages.extend(ChatMessage(m.role, m.content) for m in session.messages)
    messages.append(ChatMessage("user", prompt))
    return messages


def trim_to_window(
    messages: Sequence[ChatMessage], model: ModelBackend, max_tokens: int | None
) -> tuple[ChatMessage, ...]:
    """Keep system messages and the last (prompt) message, then as much recent history as fits.

    The budget is the model's context window minus the tokens reserved for the answer
    (``max_tokens``, or a quarter of the window up to 512). History is dropped whole
    messages at a time, oldest first. Raises :class:`PermanentModelError` if even the
    prompt does not fit, so that a model with a larger window can be tried.
    """
    if not messages:
        return ()
    window = model.context_window
    reserve = max_tokens if max_tokens else min(DEFAULT_ANSWER_RESERVE, window // 4)
    prompt = messages[-1]
    system = [m for m in messages[:-1] if m.role == "system"]
    history = [m for m in messages[:-1] if m.role != "system"]
    fixed = model.count_message_tokens([*system, prompt])
    budget = window - reserve - fixed
    if budget < 0:
        raise PermanentModelError(
            f"The prompt needs {fixed} tokens plus {reserve} for the answer, more than the "
            f"{window}-token context window of {model.model_id}. Shorten it or lower max_tokens.",
            model_id=model.model_id,
        )
    kept: list[ChatMessage] = []
    for message in reversed(history):
        cost = model.count_message_tokens([message])
        if cost > budget:
            break
        budget -= cost
        kept.append(message)
    return (*system, *reversed(kept), prompt)
