"""The session store interface that every store plugin implements."""

from __future__ import annotations

import abc
import functools
import inspect
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from oblix_core.errors import SessionError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord

if TYPE_CHECKING:
    from oblix_core.models.health import HealthStore
    from oblix_core.sessions.idempotency import IdempotencyRecords
    from oblix_core.usage.ledger import UsageLedger


@attrs.frozen
class SessionChanges:
    """What :meth:`SessionStore.load_changes` read: the messages after a cursor, or a fresh tail.

    ``cursor`` is opaque: the position just after the last message read, passed back
    next time. ``continues``: ``messages`` are exactly those appended after the cursor
    given (else they are the session's last ``max_messages`` messages, replacing what
    the caller held: a reader that lost its place starts again). ``header``: the session
    without messages (title, timestamps, context, metadata) when it may have changed
    since the cursor (always when not ``continues``), else ``None``.
    """

    cursor: Hashable
    messages: tuple[Message, ...]
    continues: bool
    header: SessionRecord | None


class SessionStore(abc.ABC):
    """Persistent storage of sessions.

    Methods are synchronous and may block. Which thread calls them: the client's async
    methods (``execute``, ``stream``, ``create_session``, ``export_session``...) and the
    async counterparts of the sync sessions API (``aload_session``...) call them from
    worker threads, never on the event loop (unless the store says it never blocks:
    :attr:`blocking`); the sync methods of the reference API
    (``load_session``, ``list_sessions``...) call them in the caller's own thread.
    Implementations must be safe to call from several threads at once, and appends
    from several processes must never lose a message.
    Session ids reaching a store have already been checked by
    :func:`oblix_core.sessions.records.validate_session_id`, but a store must still keep every
    path or key it derives inside its own root.
    """

    #: The name this store is registered under (``file``, ``redis``, ``s3``...).
    name: str = ""
    #: Whether the methods may block (I/O). A store whose methods return at once (memory)
    #: sets it false: the request path then calls them on the event loop, without a
    #: worker-thread round trip.
    blocking: bool = True

    @abc.abstractmethod
    def create(self, session: SessionRecord, *, idempotency_key: str | None = None) -> None:
        """Store a new session (with any messages it already has), atomically.

        Raises :class:`~oblix_core.errors.SessionExistsError` if the id is taken.
        ``idempotency_key`` names this write (the core passes the request id): a store
        that honours it treats a call repeated with the same key as done once; a store
        may ignore it.
        """

    @abc.abstractmethod
    def load(self, session_id: str) -> SessionRecord:
        """Return the whole session. Raises ``SessionNotFoundError``/``SessionCorruptedError``.

        The metadata returned must be at least as new as the messages (read the messages
        first, or both in one snapshot): local-only marks a session before appending its
        private turn, and a reader must never see the turn without the mark. The same
        holds for :meth:`load_recent`.
        """

    def load_recent(self, session_id: str, max_messages: int) -> SessionRecord:
        """The session with only its last ``max_messages`` messages.

        The request path uses this to read no more history than a model could take.
        The default loads everything and slices; stores should read only the tail.
        """
        record = self.load(session_id)
        if len(record.messages) <= max_messages:
            return record
        return attrs.evolve(record, messages=record.messages[len(record.messages) - max_messages :])

    def load_changes(
        self, session_id: str, cursor: Hashable | None, max_messages: int
    ) -> SessionChanges | None:
        """What changed since ``cursor`` (``None``: nothing read yet), cheaply; ``None`` if this
        store cannot tell (the default: the request path then reads the tail every time).

        The client keeps each active session's recent history in memory and asks this
        on every request, so another process's (or host's) append is seen at the cost of
        a stamp check: a store answers from a cheap stamp (a log's size, a counter, an
        ETag) and reads only the messages after the cursor. With ``cursor=None``, or
        when the cursor no longer applies (the session was replaced), or when more than
        ``max_messages`` messages were appended since, it returns the last
        ``max_messages`` messages with ``continues=False``. The same consistency as
        :meth:`load`: the header is at least as new as the messages.
        """
        return None

    @abc.abstractmethod
    def append_messages(
        self, session_id: str, messages: Sequence[Message], *, idempotency_key: str | None = None
    ) -> None:
        """Append messages, in order and contiguously, at a cost independent of history size.

        ``idempotency_key`` as for :meth:`create`: a call repeated with the same key is
        applied once by a store that honours it.
        """

    @abc.abstractmethod
    def get_metadata(self, session_id: str) -> dict[str, Any]:
        """Return the session's metadata without reading its messages."""

    @abc.abstractmethod
    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the session's metadata, atomically."""

    def search(self, text: str, limit: int = 20) -> list[dict[str, Any]]:
        """Sessions whose title or message text contains ``text`` (case-insensitive), newest first.

        Each result is a :meth:`list` summary plus ``snippet``: the match in its context.
        This default is a scan: one listing of every session, then one full
        :meth:`load` per session whose title does not match, until ``limit`` sessions
        match; its cost grows with the total size of the stored conversations. A store
        with a text index should override it.
        """
        needle = text.casefold()
        found: list[dict[str, Any]] = []
        for summary in self.list(limit=2**31 - 1):
            if len(found) >= limit:
                break
            snippet = _snippet(summary.get("title") or "", needle)
            if snippet is None:
                try:
                    record = self.load(summary["id"])
                except SessionError:
                    continue  # deleted or unreadable meanwhile
                matches = (_snippet(m.content, needle) for m in reversed(record.messages))
                snippet = next((s for s in matches if s is not None), None)
            if snippet is not None:
                found.append(summary | {"snippet": snippet})
        return found

    @abc.abstractmethod
    def list(self, limit: int = 50, filter_metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Session summaries, newest ``updated_at`` first, filtered by metadata equality.

        Each summary has ``id``, ``title``, ``created_at``, ``updated_at``,
        ``message_count`` and ``metadata``. Unreadable sessions are skipped.
        """

    def iter_session_ids(self) -> Iterator[str]:
        """Every stored session's id, read from the sessions themselves, damaged ones included.

        Migration and ``oblix sessions repair`` enumerate with this, so a session the
        listing misses (a stale listing index, a record too damaged to list) is still
        copied or reported. This default takes the ids from :meth:`list`; a store whose
        listing is a separate index, or skips damaged sessions, must override it.
        """
        for summary in self.list(limit=2**31 - 1):
            yield summary["id"]

    @abc.abstractmethod
    def delete(self, session_id: str) -> bool:
        """Delete a session; ``False`` if it did not exist."""

    def exists(self, session_id: str) -> bool:
        """Whether a session with this id exists."""
        try:
            self.get_metadata(session_id)
        except SessionNotFoundError:
            return False
        return True

    def contains_path(self, path: os.PathLike[str] | str) -> bool:
        """Whether ``path`` lies inside the store's own storage (exports must never write there)."""
        return False

    def shared_health(self) -> HealthStore | None:
        """Model health shared by every Oblix instance using this store (e.g. on several hosts).

        ``None`` (the default) keeps health in ``$OBLIX_HOME/health.json``, shared by the
        processes of one machine. See :mod:`oblix_core.models.health`.
        """
        return None

    def usage_ledger(self) -> UsageLedger | None:
        """The usage ledger kept in this store's own backend, shared by every Oblix instance
        using the store (see :mod:`oblix_core.usage.ledger`).

        ``None`` (the default) keeps usage in ``$OBLIX_HOME/usage.sqlite3``, one machine's.
        The client calls it once and closes the ledger before the store.
        """
        return None

    def idempotency_records(self) -> IdempotencyRecords | None:
        """Where results of requests sent with an idempotency key are kept, shared by every
        Oblix instance using the store (see :mod:`oblix_core.sessions.idempotency`).

        ``None`` (the default) keeps them in ``$OBLIX_HOME/idempotency/``, shared by the
        processes of one machine. The client calls it once and closes the records before
        the store.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections or handles."""

    def describe(self) -> dict[str, Any]:
        """Where this store keeps its data, for ``oblix plugins`` and errors (no secrets)."""
        return {"name": self.name}


def keyed(write: Callable[..., None], idempotency_key: str) -> Callable[..., None]:
    """``write`` (a store's ``create`` or ``append_messages``) with ``idempotency_key`` bound,
    or unchanged for a store written before the keyword existed."""
    accepts = _accepts_key(getattr(write, "__func__", write))
    return functools.partial(write, idempotency_key=idempotency_key) if accepts else write


@functools.lru_cache(maxsize=256)
def _accepts_key(write: Callable[..., None]) -> bool:
    """Whether ``write`` takes ``idempotency_key`` (asked once per store method)."""
    try:
        return "idempotency_key" in inspect.signature(write).parameters
    except (TypeError, ValueError):
        return False


def _snippet(text: str, needle: str, context: int = 40) -> str | None:
    """``text`` around the first occurrence of ``needle`` (casefolded), on one line; None if absent."""
    at = text.casefold().find(needle)
    if at < 0:
        return None
    start, end = max(0, at - context), min(len(text), at + len(needle) + context)
    piece = " ".join(text[start:end].split())
    return ("..." if start else "") + piece + ("..." if end < len(text) else "")
