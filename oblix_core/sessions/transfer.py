"""Session documents: export, import validation, copy and merge."""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from typing import Any

from oblix_core.errors import InvalidSessionDocumentError, OblixError
from oblix_core.sessions.records import (
    LOCAL_ONLY_KEY,
    ROLES,
    Message,
    SessionRecord,
    new_message_id,
    new_session_id,
    parse_timestamp,
    session_is_local_only,
    utc_now,
    validate_session_id,
)
from oblix_core.validation import check_json, check_text
from oblix_core.validation import loads as strict_loads

#: Version of the export format; bumped on incompatible changes.
FORMAT_VERSION = 1


def export_document(session: SessionRecord) -> dict[str, Any]:
    """The API reference's session JSON plus ``format_version``."""
    return {"format_version": FORMAT_VERSION, **session.to_dict()}


def dumps(session: SessionRecord) -> str:
    """The export document as JSON text."""
    return json.dumps(export_document(session), indent=2, ensure_ascii=False)


def loads(text: str, source: str) -> SessionRecord:
    """Parse and validate an export document read from ``source`` (a path, for messages)."""
    return parse_document(strict_loads(text, f"Session file {source}", InvalidSessionDocumentError))


def _bad(where: str, problem: str) -> InvalidSessionDocumentError:
    return InvalidSessionDocumentError(
        f"Invalid session document: {where} {problem}. Expected the session JSON of the Oblix "
        "sessions API (id, title, created_at, updated_at, messages, context, metadata)."
    )


def _timestamp(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "must be an ISO-8601 timestamp string")
    try:
        parse_timestamp(value)
    except ValueError:
        raise _bad(where, f"is not an ISO-8601 timestamp: {value!r}") from None
    return value


def _optional_dict(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"'{key}'", "must be an object")
    return dict(check_json(value, f"Invalid session document: '{key}'", InvalidSessionDocumentError))


def _message(raw: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object")
    if raw.get("role") not in ROLES:
        raise _bad(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {raw.get('role')!r}")
    if not isinstance(raw.get("content"), str):
        raise _bad(f"{where}.content", "must be a string")
    check_text(raw["content"], f"Invalid session document: {where}.content", InvalidSessionDocumentError)
    message_id = raw.get("id", new_message_id())
    if not isinstance(message_id, str) or not message_id:
        raise _bad(f"{where}.id", "must be a non-empty string")
    model_id = raw.get("model_id")
    metrics = raw.get("metrics")
    if model_id is not None and not isinstance(model_id, str):
        raise _bad(f"{where}.model_id", "must be a string")
    if metrics is not None and not isinstance(metrics, dict):
        raise _bad(f"{where}.metrics", "must be an object")
    check_json(metrics, f"Invalid session document: {where}.metrics", InvalidSessionDocumentError)
    timestamp = _timestamp(raw["timestamp"], f"{where}.timestamp") if "timestamp" in raw else utc_now()
    return Message(raw["role"], raw["content"], message_id, timestamp, model_id, metrics)


def parse_document(doc: Any) -> SessionRecord:
    """Validate an import document and build the session it describes.

    Accepts the API reference's session JSON, with or without ``format_version``.
    Raises :class:`InvalidSessionDocumentError` naming the first problem found.
    """
    if not isinstance(doc, dict):
        raise _bad("the document", "must be a JSON object")
    version = doc.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise _bad("'format_version'", f"is {version!r}; this Oblix reads version {FORMAT_VERSION}")
    try:
        session_id = validate_session_id(doc.get("id"))
    except OblixError as exc:
        raise _bad("'id'", f"is not usable: {exc}") from None
    title = doc.get("title")
    if title is not None and not isinstance(title, str):
        raise _bad("'title'", "must be a string or null")
    if title is not None:
        check_text(title, "Invalid session document: 'title'", InvalidSessionDocumentError)
    messages = doc.get("messages", [])
    if not isinstance(messages, list):
        raise _bad("'messages'", "must be a list")
    created_at = _timestamp(doc["created_at"], "'created_at'") if "created_at" in doc else utc_now()
    updated_at = _timestamp(doc["updated_at"], "'updated_at'") if doc.get("updated_at") else None
    return SessionRecord(
        id=session_id,
        title=title,
        created_at=created_at,
        updated_at=updated_at,
        messages=tuple(_message(m, i) for i, m in enumerate(messages)),
        context=_optional_dict(doc, "context"),
        metadata=_optional_dict(doc, "metadata"),
    )


def with_new_id(session: SessionRecord, title: str | None = None) -> SessionRecord:
    """A copy of ``session`` under a fresh id (messages keep their ids and timestamps)."""
    now = utc_now()
    return SessionRecord(
        id=new_session_id(),
        title=title if title is not None else session.title,
        created_at=now,
        updated_at=now,
        messages=session.messages,
        context=dict(session.context),
        metadata=dict(session.metadata),
    )


def _turns(session: SessionRecord) -> list[tuple[Message, ...]]:
    """The session's messages grouped into turns: a user message and the replies after it."""
    turns: list[list[Message]] = []
    for message in session.messages:
        if message.role == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return [tuple(t) for t in turns]


def merge(sessions: Sequence[SessionRecord], title: str | None = None) -> SessionRecord:
    """One new session holding every message of ``sessions``.

    Each source keeps its own message order, and a user message stays next to the
    replies that followed it: sources are merged turn by turn, ordered by each turn's
    first timestamp (ties keep the order given). A session given twice counts once.
    Context and metadata are merged left to right (later sessions win on conflicts),
    except that the result is local-only when any source is; ``metadata["merged_from"]``
    lists the source ids.
    """
    unique = list({s.id: s for s in sessions}.values())
    streams = [
        [(parse_timestamp(turn[0].timestamp), order, turn) for turn in _turns(s)]
        for order, s in enumerate(unique)
    ]
    merged = heapq.merge(*streams, key=lambda item: (item[0], item[1]))
    messages = [m for _, _, turn in merged for m in turn]
    context: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for s in unique:
        context.update(s.context)
        metadata.update(s.metadata)
    if any(session_is_local_only(s.metadata) for s in unique):
        metadata[LOCAL_ONLY_KEY] = True
    metadata["merged_from"] = [s.id for s in unique]
    default_title = "Merged: " + " + ".join(s.title or s.id for s in unique)
    now = utc_now()
    return SessionRecord(
        id=new_session_id(),
        title=title if title is not None else default_title,
        created_at=now,
        updated_at=now,
        messages=tuple(messages),
        context=context,
        metadata=metadata,
    )
