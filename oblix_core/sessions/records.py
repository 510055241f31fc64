"""Session records (attrs) and their JSON shapes, as in the sessions API reference."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs

from oblix_core.errors import InvalidSessionIdError
from oblix_core.validation import json_equal

#: Roles a stored message may have.
ROLES = ("system", "user", "assistant")

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


#: The last whole second formatted by :func:`utc_now`: (its epoch second, ``YYYY-MM-DDTHH:MM:SS``).
_SECOND: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with milliseconds and a ``Z``.

    The date and time of day are formatted once per second (a request takes several
    timestamps); the milliseconds are added to them.
    """
    global _SECOND
    now = time.time()
    second = int(now)
    cached = _SECOND  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _SECOND = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1000):03d}Z"  # as format_timestamp


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime like ``2023-07-15T14:30:22.123Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp (``Z`` or offset); naive values are taken as UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 ids instead of one each
    (on the request path every answer takes three). Thread-safe; a forked child starts afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._used = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._used + count > len(self._pool):
                self._pool, self._used = os.urandom(4096), 0
            start = self._used
            self._used += count
            return self._pool[start : self._used]

    def forget(self) -> None:
        """In a forked child: never hand out the parent's bytes again."""
        self._lock = threading.Lock()
        self._pool, self._used = b"", 0


_RANDOM = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.forget)


def random_hex() -> str:
    """32 random hex digits (128 bits from ``os.urandom``), as ``uuid4().hex`` has."""
    return _RANDOM.take(16).hex()


def new_session_id() -> str:
    """A fresh random session id (a UUID4 string)."""
    return str(uuid.UUID(bytes=_RANDOM.take(16), version=4))


def new_message_id() -> str:
    """A fresh message id, unique without coordination between writers."""
    return f"msg_{random_hex()}"


def new_message_id_pair() -> tuple[str, str]:
    """Two fresh message ids (each as :func:`new_message_id`) from one read of the random pool:
    an exchange's user and assistant messages."""
    digits = _RANDOM.take(32).hex()
    return f"msg_{digits[:32]}", f"msg_{digits[32:]}"


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is safe to use as a storage key, else raise.

    Ids are 1-128 characters of letters, digits, ``_``, ``.`` and ``-``, starting with a
    letter or digit, and never ``..``-style path segments.
    """
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id) or ".." in session_id:
        raise InvalidSessionIdError(
            f"Invalid session id {session_id!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (ids returned by create_session always qualify)."
        )
    return session_id


@attrs.frozen
class Message:
    """One message of a conversation."""

    role: str
    content: str
    id: str = attrs.field(factory=new_message_id)
    timestamp: str = attrs.field(factory=utc_now)
    model_id: str | None = None
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
        }
        if self.model_id is not None:
            data["model_id"] = self.model_id
        if self.metrics is not None:
            data["metrics"] = self.metrics
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(
            role=data["role"],
            content=data["content"],
            id=data.get("id") or new_message_id(),
            timestamp=data.get("timestamp") or utc_now(),
            model_id=data.get("model_id"),
            metrics=data.get("metrics"),
        )


@attrs.frozen
class SessionRecord:
    """A whole session: header fields plus its messages."""

    id: str
    title: str | None = None
    created_at: str = attrs.field(factory=utc_now)
    updated_at: str | None = None
    messages: tuple[Message, ...] = ()
    context: dict[str, Any] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def last_updated(self) -> str:
        """``updated_at``, falling back to the newest message or the creation time."""
        candidates = [self.created_at]
        if self.updated_at:
            candidates.append(self.updated_at)
        if self.messages:
            candidates.append(self.messages[-1].timestamp)
        return max(candidates, key=parse_timestamp)

    def to_dict(self) -> dict[str, Any]:
        """The API reference's session dictionary."""
        return {
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.last_updated,
            "messages": [m.to_dict() for m in self.messages],
            "context": dict(self.context),
            "metadata": dict(self.metadata),
        }


#: The session metadata key that makes a session local-only (see :mod:`oblix_core.request.privacy`).
LOCAL_ONLY_KEY = "local_only"


def session_is_local_only(metadata: dict[str, Any]) -> bool:
    """Whether session metadata makes its session local-only: the key with any value but
    ``false`` (fails closed: ``"yes"``, ``1``, ``null`` all count)."""
    return LOCAL_ONLY_KEY in metadata and metadata[LOCAL_ONLY_KEY] is not False


def matches_metadata(metadata: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    """True if every key of ``wanted`` is in ``metadata`` with an equal JSON value.

    Booleans never equal numbers (``{"flag": 1}`` does not match a stored ``true``), with
    one exception: ``{"local_only": true/false}`` asks whether the session *is* local-only,
    as routing reads it (a stored ``"yes"`` is local-only; an absent key is not).
    """
    return not wanted or all(_matches(metadata, k, v) for k, v in wanted.items())


def _matches(metadata: dict[str, Any], key: str, wanted: Any) -> bool:
    if key == LOCAL_ONLY_KEY and isinstance(wanted, bool):
        return session_is_local_only(metadata) is wanted
    return key in metadata and json_equal(metadata[key], wanted)
