"""Reading one session folder of the file store: its metadata, its log, its listing row."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from oblix.plugin import (
    Message,
    SessionCorruptedError,
    SessionNotFoundError,
    SessionRecord,
    parse_timestamp,
    utc_now,
)
from oblix_file.files import io_error, stamp, tail
from oblix_file.index import Summary

META = "meta.json"
MESSAGES = "messages.jsonl"


def missing(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"Session {session_id} does not exist.")


def latest(*timestamps: str | None) -> str:
    """The newest of the given timestamps (``None``s ignored)."""
    return max((t for t in timestamps if t), key=parse_timestamp)


def _timestamp(value: Any) -> bool:
    """Whether ``value`` is an ISO-8601 timestamp string."""
    try:
        parse_timestamp(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, str)


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with the shape of a parsed ``meta.json`` (``None``: nothing)."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if not _timestamp(meta.get("created_at")):
        return "has no valid created_at"
    if meta.get("updated_at") is not None and not _timestamp(meta["updated_at"]):
        return "has an invalid updated_at"
    if meta.get("title") is not None and not isinstance(meta["title"], str):
        return "has a title that is not a string"
    for key in ("context", "metadata"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"has a {key} that is not an object"
    return None


def present(path: Path) -> bool:
    """Whether the folder ``path`` holds a session (a damaged one too): a meta.json or a log."""
    return (path / META).exists() or (path / MESSAGES).exists()


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed ``meta.json`` of the session folder ``path``; ``SessionCorruptedError`` if damaged."""
    try:
        meta = json.loads((path / META).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        if (path / MESSAGES).exists():
            raise SessionCorruptedError(
                f"Session {path.name} has a {MESSAGES} but no {META}. Other sessions are unaffected; "
                "restore it from a backup, or delete the session (`oblix sessions repair --delete`)."
            ) from None
        raise missing(path.name) from None
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / META, exc, outcome="") from exc
    except ValueError as exc:
        raise SessionCorruptedError(
            f"Session {path.name} has an unreadable {META}: {exc}. Other sessions are unaffected; "
            f"restore it from a backup or delete the session."
        ) from exc
    problem = _meta_problem(meta)
    if problem is not None:
        raise SessionCorruptedError(
            f"Session {path.name}: its {META} {problem}. Other sessions are unaffected; restore it "
            "from a backup, or delete the session (`oblix sessions repair --delete`)."
        )
    return dict(meta)


def read_messages(path: Path, last: int | None = None) -> list[Message]:
    """The session's messages (only the ``last`` ones if given); a torn last line is ignored."""
    try:
        data = tail(path / MESSAGES, last) if last is not None else (path / MESSAGES).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / MESSAGES, exc, outcome="") from exc
    if last is None:  # the text after the last newline: empty, or a torn unacknowledged append
        return parse_block(path, data[: data.rfind(b"\n") + 1])
    lines = data.split(b"\n")
    lines.pop()
    return parse_lines(path, lines[max(0, len(lines) - last) :])


def parse_block(path: Path, block: bytes, where: str = "line") -> list[Message]:
    """Complete log lines (``block`` ends with a newline) as messages, as :func:`parse_lines`."""
    try:
        return _parse_block(block)
    except (ValueError, KeyError, TypeError):
        return parse_lines(path, block.split(b"\n")[:-1], where)  # names the bad line


def parse_lines(path: Path, lines: Sequence[bytes], where: str = "line") -> list[Message]:
    """Log lines of the session folder ``path`` as messages; ``SessionCorruptedError`` names
    the first bad one (``where`` says what its number counts)."""
    try:
        return _parse_all(lines)
    except (ValueError, KeyError, TypeError):
        pass  # some line is bad: the line by line parse below names it
    messages = []
    for number, line in enumerate(lines, 1):
        try:
            messages.append(parse_message(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionCorruptedError(
                f"Session {path.name}: {where} {number} of {MESSAGES} is not a valid message ({exc}). "
                "Other sessions are unaffected; fix or remove that line."
            ) from exc
    return messages


def _parse_all(lines: Sequence[bytes]) -> list[Message]:
    return _parse_block(b"".join(line + b"\n" for line in lines))


#: Checks a timestamp as parse_timestamp does (Python 3.11 reads the ``Z`` itself).
from_iso = datetime.fromisoformat
#: Bytes of log parsed in one JSON call: big enough that the per-call cost vanishes, small
#: enough that the parsed dicts die before the next piece (fewer live objects for the GC).
PIECE = 1 << 16


def _parse_block(block: bytes) -> list[Message]:
    """Every line of ``block``, in a few JSON parses (the cost is per byte, not per line),
    checked as :func:`parse_message` checks one; raises on the first problem without
    saying where.

    Each line must hold one object: every line starts with ``{`` and ends with ``}``
    (no line holds a raw newline, so each ``}\\n{`` is a boundary), and the parse yields
    one object per line.
    """
    messages: list[Message] = []
    start, size = 0, len(block)
    while start < size:
        end = block.find(b"\n", start + PIECE) + 1 or size
        piece = block[start:end]
        lines = piece.count(b"\n")
        if piece[:1] != b"{" or piece[-2:] != b"}\n" or piece.count(b"}\n{") != lines - 1:
            raise ValueError("not one JSON object per line")
        items = json.loads(b"[" + piece[:-1].replace(b"\n", b",") + b"]")
        if len(items) != lines:
            raise ValueError("not one JSON object per line")
        messages += _messages(items)
        start = end
    return messages


def _messages(items: list[Any]) -> list[Message]:
    """Parsed log lines as messages, checked as :func:`parse_message` checks one."""
    messages = []
    for raw in items:
        role, content, stamp = raw["role"], raw["content"], raw.get("timestamp")
        model_id, metrics, mid = raw.get("model_id"), raw.get("metrics"), raw.get("id")
        if not (
            type(role) is str
            and type(content) is str
            and (mid is None or type(mid) is str)
            and (model_id is None or type(model_id) is str)
            and (metrics is None or type(metrics) is dict)
        ):
            raise TypeError("a field of the wrong type")
        if stamp is None or not isinstance(stamp, str):
            if "timestamp" in raw:
                raise ValueError("invalid timestamp")
            stamp = utc_now()
        else:
            from_iso(stamp)
        if mid:
            messages.append(Message(role, content, mid, stamp, model_id, metrics))
        else:  # a fresh id, as Message.from_dict gives
            messages.append(Message(role, content, timestamp=stamp, model_id=model_id, metrics=metrics))
    return messages


def parse_message(line: bytes) -> Message:
    """One log line as a message; ``ValueError``/``KeyError``/``TypeError`` if it is not one."""
    raw = json.loads(line)
    if not isinstance(raw, dict):
        raise TypeError("not a JSON object")
    if not isinstance(raw["role"], str) or not isinstance(raw["content"], str):
        raise TypeError("role and content must be strings")
    if "timestamp" in raw and not _timestamp(raw["timestamp"]):
        raise ValueError(f"invalid timestamp {raw['timestamp']!r}")
    for key, kind in (("id", str), ("model_id", str), ("metrics", dict)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise TypeError(f"{key} must be a {kind.__name__}")
    return Message.from_dict(raw)


def to_record(path: Path, meta: dict[str, Any], messages: Sequence[Message]) -> SessionRecord:
    return SessionRecord(
        id=path.name,
        title=meta.get("title"),
        created_at=meta["created_at"],
        updated_at=meta.get("updated_at"),
        messages=tuple(messages),
        context=meta.get("context") or {},
        metadata=meta.get("metadata") or {},
    )


def summarise(path: Path) -> Summary:
    """The listing row of a session, derived from its files (reads the whole log)."""
    try:
        meta_stamp = stamp(os.stat(path / META))  # taken before reading: a later change shows
    except (FileNotFoundError, NotADirectoryError):
        raise missing(path.name) from None
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / META, exc, outcome="") from exc
    record = to_record(path, read_meta(path), ())
    count, size, last_line = count_lines(path / MESSAGES)
    last_timestamp = None
    with suppress(ValueError, KeyError, TypeError):  # a damaged line: loading the session reports it
        last_timestamp = parse_message(last_line).timestamp if last_line else None
    return Summary(
        id=path.name,
        title=record.title,
        created_at=record.created_at,
        updated_at=latest(record.created_at, record.updated_at, last_timestamp),
        message_count=count,
        metadata=record.metadata,
        log_size=size,
        meta_stamp=meta_stamp,
    )


def count_lines(path: Path) -> tuple[int, int, bytes]:
    """(complete lines, bytes read, last complete line) of a log, read in blocks."""
    count = size = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                count += block.count(b"\n")
                size += len(block)
        end = tail(path, 1)
    except FileNotFoundError:
        return 0, 0, b""
    except OSError as exc:
        raise io_error(f"Cannot read session {path.parent.name}", path, exc, outcome="") from exc
    return count, size, end[: end.rfind(b"\n")].rsplit(b"\n", 1)[-1]


def log_size(path: Path) -> int | None:
    """The size of the session's log (0 if it has none); ``None`` if it cannot be read."""
    try:
        return os.stat(path / MESSAGES).st_size
    except FileNotFoundError:
        return 0
    except OSError:
        return None
