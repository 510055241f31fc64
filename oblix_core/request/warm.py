"""Warm history: each active session's recent tail kept in memory, refreshed by a cheap stamp.

A request needs the session's recent history (as much as the largest context window
can hold). Reading and parsing it from the store on every request makes a request's
cost grow with the session; :class:`WarmHistory` keeps the parsed tail of recently used
sessions (bounded, least recently used first out) and asks the store only what changed
since (:meth:`~oblix_core.sessions.store.SessionStore.load_changes`: the file store compares
its log's size, Redis a counter), so an append by another process or host is still
seen on the next request. A store that cannot tell changes is read every time
(:func:`~oblix_core.request.history.read_tail`), as before.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable

import attrs

from oblix_core.request.history import (
    FIRST_PAGE,
    MARGIN,
    CountedHistory,
    chat_messages,
    estimated_tokens,
    marks,
    read_tail,
    recent_start,
)
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.sessions.store import SessionChanges, SessionStore

#: Sessions kept warm per client.
DEFAULT_CAPACITY = 256
#: New messages asked for in one refresh; more than that and the tail is read afresh.
REFRESH_PAGE = 256


@attrs.define  # not frozen: made per request on the hot path (a frozen init is slower); never changed
class WarmTail:
    """A session's recent messages as read, with their chat form and where the read stopped."""

    cursor: Hashable
    header: SessionRecord  # the session without messages
    messages: tuple[Message, ...]
    #: ``messages`` as chat messages, with their token counts per tokenizer as far as counted.
    chat: CountedHistory
    #: Whether ``messages`` start at the session's first message.
    whole: bool
    estimate: int
    #: Running estimated tokens before each message and after the last (:func:`marks`), once a
    #: tail holds more than a request uses (then the start of what it uses is looked up in it).
    running: tuple[int, ...] | None = None

    def cumulative(self) -> tuple[int, ...]:
        """:attr:`running`, made when first needed (the same for every thread that makes it)."""
        if self.running is None:
            self.running = marks(self.messages)
        return self.running

    def recent(self, wanted: float) -> tuple[SessionRecord, CountedHistory]:
        """The session with the history a request uses (:func:`recent_start`; metadata and
        context copied: callers own them), and that history as counted chat messages."""
        header = self.header
        start = recent_start(self.cumulative(), wanted) if self.estimate > wanted else 0
        record = SessionRecord(
            header.id,
            header.title,
            header.created_at,
            header.updated_at,
            self.messages[start:] if start else self.messages,
            dict(header.context),
            dict(header.metadata),
        )
        return record, self.chat.suffix(start)

    def extended(self, changes: SessionChanges) -> WarmTail:
        """This tail with the messages appended after its cursor."""
        new, running = changes.messages, self.running
        return WarmTail(
            changes.cursor,
            changes.header or self.header,
            self.messages + new,
            self.chat.extended(chat_messages(new)),
            self.whole,
            self.estimate + estimated_tokens(new),
            running + marks(new, running[-1])[1:] if running is not None else None,
        )

    def bounded(self, wanted: float) -> WarmTail:
        """This tail without old messages it holds beyond 1.5 times ``wanted`` estimated tokens
        (cut back to 1.1 times: the request path counts every message held)."""
        if self.estimate <= 1.5 * wanted:
            return self
        running = self.cumulative()
        keep = recent_start(running, 1.1 * wanted)
        return attrs.evolve(
            self,
            messages=self.messages[keep:],
            chat=self.chat.without_first(keep),
            whole=False,
            estimate=running[-1] - running[keep],
            running=running[keep:],
        )


def _fresh(changes: SessionChanges, asked: int) -> WarmTail:
    assert changes.header is not None, "a fresh read carries the session's header"
    messages = changes.messages
    return WarmTail(
        changes.cursor,
        attrs.evolve(changes.header, messages=()),
        messages,
        CountedHistory(chat_messages(messages)),
        len(messages) < asked,
        estimated_tokens(messages),
    )


class WarmHistory:
    """The recent history of up to ``capacity`` sessions, kept warm (see the module docs).

    Safe to use from several threads: a refresh that raced another one for the same
    session is used for its own request and not kept.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._tails: OrderedDict[str, WarmTail] = OrderedDict()
        self._lock = threading.Lock()

    def read(
        self, store: SessionStore, session_id: str, budget_tokens: int
    ) -> tuple[SessionRecord, CountedHistory | None]:
        """The session with as much recent history as ``budget_tokens`` can use, and that
        history as chat messages with their counts (``None`` when the store cannot be kept warm).

        Runs in a worker thread (the store may block).
        """
        wanted = MARGIN * budget_tokens
        with self._lock:
            held = self._tails.get(session_id)
        tail = self._refreshed(store, session_id, held, wanted) if held is not None else None
        if tail is None:
            tail = self._cold(store, session_id, wanted)
            if tail is None:
                return read_tail(store, session_id, budget_tokens), None
        tail = tail.bounded(wanted)
        with self._lock:
            if self._tails.get(session_id) is held:
                self._tails[session_id] = tail
                self._tails.move_to_end(session_id)
                while len(self._tails) > self.capacity:
                    self._tails.popitem(last=False)
        return tail.recent(wanted)

    def forget(self, session_id: str) -> None:
        """Drop a session's tail (it was deleted or replaced)."""
        with self._lock:
            self._tails.pop(session_id, None)

    @staticmethod
    def _refreshed(store: SessionStore, session_id: str, held: WarmTail, wanted: float) -> WarmTail | None:
        """``held`` brought up to date; ``None`` if the store gave a fresh read that falls short."""
        changes = store.load_changes(session_id, held.cursor, REFRESH_PAGE)
        if changes is None:
            return None
        if changes.continues:
            tail = held.extended(changes)
            return tail if tail.whole or tail.estimate >= wanted else None
        tail = _fresh(changes, REFRESH_PAGE)
        return tail if tail.whole or tail.estimate >= wanted else None

    @staticmethod
    def _cold(store: SessionStore, session_id: str, wanted: float) -> WarmTail | None:
        """The tail read afresh, paging as :func:`~oblix_core.request.history.read_tail` does."""
        size = FIRST_PAGE
        while True:
            changes = store.load_changes(session_id, None, size)
            if changes is None:
                return None
            tail = _fresh(changes, size)
            if tail.whole or tail.estimate >= wanted:
                return tail
            per_message = max(1.0, tail.estimate / len(tail.messages))
            size = max(2 * size, math.ceil(wanted / per_message * 1.1))
