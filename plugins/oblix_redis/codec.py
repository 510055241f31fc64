"""How the redis store turns records into Redis values and back, and its index tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from oblix.plugin import Message, SessionCorruptedError, SessionRecord, parse_timestamp

#: Index tokens longer than this are replaced by their SHA-256 (bounded key names).
MAX_TOKEN = 128


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _typed(value: Any) -> Any:
    """``value`` with whole floats as ints, so that JSON numbers compare by value (1 == 1.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_typed(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """A JSON text equal for equal JSON values: ``1`` and ``1.0`` agree, ``1`` and ``true`` don't."""
    return json.dumps(_typed(value), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def token(key: str, value: Any) -> str:
    """The index token of one metadata entry (the suffix of its index set's key)."""
    text = canonical([key, value])
    if len(text.encode()) > MAX_TOKEN:
        return "#" + hashlib.sha256(text.encode()).hexdigest()
    return text


def score_value(timestamp: str) -> float:
    """A timestamp as epoch seconds."""
    return parse_timestamp(timestamp).timestamp()


def score(timestamp: str) -> str:
    """A timestamp as epoch seconds, as exact float text for the scripts."""
    return repr(parse_timestamp(timestamp).timestamp())


def encode_message(message: Message) -> str:
    return dumps(message.to_dict())


def metadata_args(metadata: dict[str, Any]) -> list[str]:
    """``n`` then ``(key, JSON value, token)`` per entry, as the scripts take them."""
    args = [str(len(metadata))]
    for key, value in metadata.items():
        args += [key, dumps(value), token(key, value)]
    return args


def decode_messages(session_id: str, texts: Sequence[str]) -> list[Message]:
    """Messages from their stored texts: single JSON messages and chunks of them joined by ','.

    One parse of the joined texts: the cost is per byte, not per stored element.
    """
    try:
        items = json.loads("[" + ",".join(texts) + "]")
        # positional: the fastest way to build 10,000 frozen attrs objects
        return [
            Message(d["role"], d["content"], d["id"], d["timestamp"], d.get("model_id"), d.get("metrics"))
            for d in items
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise _damage(session_id, texts, exc) from exc


def _damage(session_id: str, texts: Sequence[str], exc: Exception) -> SessionCorruptedError:
    """The error naming the first damaged stored message."""
    number = 0
    advice = "Other sessions are unaffected; fix or remove it with redis-cli."
    for text in texts:
        try:
            items = json.loads("[" + text + "]")
        except ValueError as item_exc:
            return SessionCorruptedError(
                f"Session {session_id}: the stored text from message {number + 1} on is not valid JSON "
                f"({item_exc}). {advice}"
            )
        for item in items:
            number += 1
            try:
                Message.from_dict(item)
            except (KeyError, TypeError, AttributeError) as item_exc:
                return SessionCorruptedError(
                    f"Session {session_id}: stored message {number} is not a valid message ({item_exc!r}). "
                    f"{advice}"
                )
    return SessionCorruptedError(f"Session {session_id}: its messages are unreadable ({exc}). {advice}")


def decode_metadata(session_id: str, fields: dict[str, str]) -> dict[str, Any]:
    try:
        return {key: json.loads(value) for key, value in fields.items()}
    except ValueError as exc:
        raise SessionCorruptedError(
            f"Session {session_id}: unreadable metadata ({exc}). Other sessions are unaffected."
        ) from exc


def decode_record(
    session_id: str, meta: dict[str, str], md: dict[str, str], msgs: Sequence[str]
) -> SessionRecord:
    """A record from the meta hash, the metadata hash and the message texts."""
    try:
        title = json.loads(meta.get("title", "null"))
        context = json.loads(meta.get("context", "{}"))
        created_at = meta["created_at"]
    except (KeyError, ValueError) as exc:
        raise SessionCorruptedError(
            f"Session {session_id} has a damaged header ({exc!r}). Other sessions are unaffected; "
            "delete it or restore it from a backup."
        ) from exc
    return SessionRecord(
        id=session_id,
        title=title,
        created_at=created_at,
        updated_at=meta.get("updated_at"),
        messages=tuple(decode_messages(session_id, msgs)),
        context=context if isinstance(context, dict) else {},
        metadata=decode_metadata(session_id, md),
    )


def summary(session_id: str, head: Sequence[str | None], md: dict[str, str]) -> dict[str, Any]:
    """A listing row from ``HMGET meta title created_at last_updated count`` and the metadata.

    A damaged header is a :class:`SessionCorruptedError` (listings skip the session).
    """
    title, created_at, last_updated, count = head
    try:
        return {
            "id": session_id,
            "title": json.loads(title) if title else None,
            "created_at": created_at,
            "updated_at": last_updated or created_at,
            "message_count": int(count or 0),
            "metadata": decode_metadata(session_id, md),
        }
    except (ValueError, TypeError) as exc:
        raise SessionCorruptedError(
            f"Session {session_id} has a damaged header ({exc}). Other sessions are unaffected; "
            "delete it or restore it from a backup."
        ) from exc
