"""Object keys, JSON shapes and pure decisions of the S3 store (no I/O here).

Layout under ``<prefix>``::

    sessions/<id>/manifest.json     header, context, metadata, ordered segment list
    sessions/<id>/seg-<uuid>.jsonl  immutable: appended messages, one JSON object a line
    index/<nn>.json                 listing index, 16 shards by a hash of the session id
    usage/<YYYY-MM-DD>.json         the usage ledger, one object per UTC day (oblix_s3.ledger)
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from oblix.plugin import Message, SessionCorruptedError, SessionRecord, parse_timestamp, validate_session_id

FORMAT = 1
INDEX_SHARDS = 16
MANIFEST = "manifest.json"


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class Keys:
    """Object keys under one prefix; every key a session id derives stays in its folder."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def session(self, session_id: str) -> str:
        return f"{self.prefix}sessions/{validate_session_id(session_id)}/"

    def manifest(self, session_id: str) -> str:
        return self.session(session_id) + MANIFEST

    def segment(self, session_id: str, name: str) -> str:
        return self.session(session_id) + name

    def shard(self, number: int) -> str:
        return f"{self.prefix}index/{number:02d}.json"

    @staticmethod
    def shard_of(session_id: str) -> int:
        return hashlib.blake2b(session_id.encode(), digest_size=2).digest()[0] % INDEX_SHARDS


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex}.jsonl"


# -- segments -------------------------------------------------------------------------------


def encode_segment(messages: Sequence[Message]) -> bytes:
    """One compact JSON object per line (JSON strings never hold a raw newline)."""
    return b"".join(dumps(m.to_dict()) + b"\n" for m in messages)


def decode_segment(session_id: str, name: str, body: bytes) -> list[Message]:
    """Parse a segment in one ``json.loads`` (lines joined into an array)."""
    try:
        rows = json.loads(b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]")
        return [Message.from_dict(row) for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionCorruptedError(
            f"Session {session_id}: segment {name} is not valid JSONL messages ({exc}). Other "
            "sessions are unaffected; restore the object from a backup or delete the session."
        ) from exc


# -- manifests ------------------------------------------------------------------------------


def new_manifest(record: SessionRecord, segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "uid": uuid.uuid4().hex,
        "version": 1,
        "id": record.id,
        "title": record.title,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "last_updated": record.last_updated,
        "context": record.context,
        "metadata": record.metadata,
        "segments": segments,
    }


def _timestamp(value: Any, optional: bool = False) -> bool:
    if value is None:
        return optional
    try:
        parse_timestamp(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, str)


def _well_formed(manifest: Any) -> bool:
    """Whether a parsed manifest has every field a reader uses, with the right types."""
    return (
        isinstance(manifest, dict)
        and _timestamp(manifest.get("created_at"))
        and _timestamp(manifest.get("updated_at"), optional=True)
        and _timestamp(manifest.get("last_updated"), optional=True)
        and (manifest.get("title") is None or isinstance(manifest["title"], str))
        and all(manifest.get(k) is None or isinstance(manifest[k], dict) for k in ("context", "metadata"))
        and isinstance(manifest.get("uid"), str)
        and isinstance(manifest.get("version"), int)
        and isinstance(manifest.get("segments"), list)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("key"), str)
            and isinstance(s.get("count"), int)
            and s["count"] >= 0
            for s in manifest["segments"]
        )
    )


def parse_manifest(session_id: str, body: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
        ok = _well_formed(manifest) and manifest.get("id") == session_id
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise SessionCorruptedError(
            f"Session {session_id} has an unreadable {MANIFEST}. Other sessions are unaffected; "
            "restore it from a backup or delete the session."
        )
    return dict(manifest)


def message_count(manifest: dict[str, Any]) -> int:
    return sum(int(s["count"]) for s in manifest["segments"])


def to_record(manifest: dict[str, Any], messages: Sequence[Message]) -> SessionRecord:
    return SessionRecord(
        id=manifest["id"],
        title=manifest.get("title"),
        created_at=manifest["created_at"],
        updated_at=manifest.get("updated_at"),
        messages=tuple(messages),
        context=manifest.get("context") or {},
        metadata=manifest.get("metadata") or {},
    )


def last_updated(manifest: dict[str, Any]) -> str:
    """When the session last changed: its header's ``updated_at`` or its newest message.

    ``updated_at`` itself keeps what the session was created or last updated with (as
    in the file store); ``last_updated`` also follows appends and orders the listing.
    """
    stamps = [manifest["created_at"], manifest.get("updated_at"), manifest.get("last_updated")]
    return max((s for s in stamps if s), key=parse_timestamp)


def later(current: str | None, *stamps: str) -> str:
    """The latest of ``current`` and ``stamps`` (timestamps in any ISO-8601 form)."""
    candidates = [s for s in (current, *stamps) if s]
    return max(candidates, key=parse_timestamp)


@attrs.frozen
class ManifestCursor:
    """Where a reader of a session stopped (``load_changes``' cursor).

    ``etag``: the manifest read (asked again with ``If-None-Match``: 304 means nothing
    changed). ``uid``: the session's incarnation (a replaced session has a new one).
    ``count``: messages up to the cursor; a message's position never moves (appends add
    at the end, compaction merges segments in place). ``header``: :func:`header_digest`.
    """

    uid: str
    etag: str
    count: int
    header: str


def header_digest(manifest: dict[str, Any]) -> str:
    """A digest of what the session's header holds (title, timestamps, context, metadata)."""
    fields = [manifest.get(k) for k in ("title", "created_at", "updated_at", "context", "metadata")]
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def segments_from(segments: list[dict[str, Any]], position: int) -> tuple[list[dict[str, Any]], int]:
    """The segments holding the messages from ``position`` (0-based) on, and how many
    messages of the first of them come before ``position`` (a compaction may have merged
    messages already read with new ones)."""
    start = 0
    for at, segment in enumerate(segments):
        count = int(segment["count"])
        if start + count > position:
            return segments[at:], position - start
        start += count
    return [], 0


def tail_segments(segments: list[dict[str, Any]], wanted: int) -> list[dict[str, Any]]:
    """The fewest last segments holding at least ``wanted`` messages."""
    if wanted <= 0:
        return []
    total = 0
    for start in range(len(segments) - 1, -1, -1):
        total += int(segments[start]["count"])
        if total >= wanted:
            return segments[start:]
    return list(segments)


def plan_compaction(counts: Sequence[int], max_segments: int, ratio: float = 2.0) -> int | None:
    """Where the tail to merge into one segment starts, or ``None`` (nothing to do).

    Nothing happens while a session has at most ``max_segments`` segments. Past that,
    the tail is merged backwards while the segment before it holds at most ``ratio``
    times what the merged tail holds; sizes then grow geometrically from the tail to
    the head, so a session keeps about ``log2(messages / max_segments)`` large segments
    plus a few small recent ones, and each message is rewritten O(log n) times overall.
    """
    if len(counts) <= max_segments:
        return None
    start = len(counts) - 1
    merged = counts[start]
    while start > 0 and (counts[start - 1] <= ratio * merged or len(counts) - start < 2):
        start -= 1
        merged += counts[start]
    return start


# -- index entries -------------------------------------------------------------


def index_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the listing index holds for one session (``uid``/``version`` order updates)."""
    updated = last_updated(manifest)
    return {
        "uid": manifest["uid"],
        "version": manifest["version"],
        "title": manifest.get("title"),
        "created_at": manifest["created_at"],
        "updated_at": updated,
        "ts": parse_timestamp(updated).timestamp(),
        "message_count": message_count(manifest),
        "metadata": manifest.get("metadata") or {},
    }
