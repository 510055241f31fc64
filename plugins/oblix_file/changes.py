"""What changed in a session folder since a cursor: the file store's ``load_changes``.

The log is append-only: a cursor is the byte offset just after the last complete line
read, with the log's inode and the first bytes of that line (its message id), so a
replaced log (a new inode), a log cut back below the cursor, or one rewritten in
place (the line is no longer there) is read afresh instead. A refresh costs an
``fstat`` of the log, one small ``pread`` to check the cursor's line, a read of the
bytes appended since, and a ``stat`` of ``meta.json`` (read again only when its stamp
changed): messages are read before the metadata, as :meth:`load` does.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from oblix.plugin import Message, SessionChanges
from oblix_file.files import io_error, stamp
from oblix_file.reading import MESSAGES, META, parse_block, read_meta, to_record

#: Bytes of a cursor's last line kept to recognise it (a message line starts with its id).
HEAD = 64
#: Appended bytes read in one refresh at most; beyond that the tail is read afresh.
MAX_REFRESH_BYTES = 4 << 20
BLOCK = 1 << 16


@attrs.frozen
class LogCursor:
    inode: int
    offset: int
    #: Where the last complete line read starts (-1: none) and its first bytes.
    line_at: int
    line_head: bytes
    meta_stamp: str


def load_changes(path: Path, cursor: object, max_messages: int) -> SessionChanges:
    """The messages appended after ``cursor`` (a :class:`LogCursor`), else the last ``max_messages``."""
    if isinstance(cursor, LogCursor):
        changes = _continued(path, cursor, max_messages)
        if changes is not None:
            return changes
    return _fresh(path, max(0, max_messages))


def _tail(fd: int, size: int, lines: int) -> tuple[int, bytes]:
    """Where the last ``lines`` complete lines of the first ``size`` bytes start, and those bytes."""
    start, data = size, b""
    while start > 0 and data.count(b"\n") <= lines:
        step = min(start, max(BLOCK, len(data)))
        start -= step
        data = _pread(fd, step, start) + data
    if start > 0:  # drop the partial first line
        cut = data.index(b"\n") + 1
        start, data = start + cut, data[cut:]
    return start, data


def _pread(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        length, offset = length - len(part), offset + len(part)
    return b"".join(parts)


def _changes(
    path: Path, inode: int, start: int, data: bytes, meta_stamp: str | None, where: str
) -> tuple[list[Message], LogCursor, bool]:
    """Messages of ``data`` (read from ``start``), the cursor after them, and whether ``meta.json``
    changed from ``meta_stamp`` (its stamp is taken after the messages were read)."""
    end = data.rfind(b"\n") + 1
    messages = parse_block(path, data[:end], where)
    last = data[data.rfind(b"\n", 0, end - 1) + 1 : end - 1] if end else b""
    try:
        new_stamp = stamp(os.stat(path / META))
    except FileNotFoundError:
        new_stamp = ""  # read_meta says what is wrong
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / META, exc, outcome="") from exc
    if end:
        cursor = LogCursor(inode, start + end, start + end - len(last) - 1, last[:HEAD], new_stamp)
    else:
        cursor = LogCursor(inode, start + end, -1, b"", new_stamp)
    return messages, cursor, new_stamp != meta_stamp


def _open(path: Path) -> int | None:
    try:
        return os.open(path / MESSAGES, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / MESSAGES, exc, outcome="") from exc


def _fresh(path: Path, max_messages: int) -> SessionChanges:
    fd = _open(path)
    inode, start, data = -1, 0, b""
    if fd is not None:
        try:
            status = os.fstat(fd)
            inode = status.st_ino
            start, data = _tail(fd, status.st_size, max_messages)
        except OSError as exc:
            raise io_error(f"Cannot read session {path.name}", path / MESSAGES, exc, outcome="") from exc
        finally:
            os.close(fd)
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1] if end else []
    if len(lines) > max_messages:  # the block read more lines than asked
        skip = sum(len(line) + 1 for line in lines[: len(lines) - max_messages])
        start, data = start + skip, data[skip:]
    messages, cursor, _ = _changes(path, inode, start, data, None, "line (from the end)")
    header = to_record(path, read_meta(path), ())
    return SessionChanges(cursor, tuple(messages), False, header)


def _continued(path: Path, cursor: LogCursor, max_messages: int) -> SessionChanges | None:
    fd = _open(path)
    if fd is None:
        return None
    try:
        status = os.fstat(fd)
        size = status.st_size
        if status.st_ino != cursor.inode or size < cursor.offset or size - cursor.offset > MAX_REFRESH_BYTES:
            return None
        if cursor.line_at >= 0 and _pread(fd, len(cursor.line_head), cursor.line_at) != cursor.line_head:
            return None  # rewritten in place
        data = _pread(fd, size - cursor.offset, cursor.offset) if size > cursor.offset else b""
    except OSError as exc:
        raise io_error(f"Cannot read session {path.name}", path / MESSAGES, exc, outcome="") from exc
    finally:
        os.close(fd)
    if data.count(b"\n") > max_messages:
        return None
    messages, new, changed = _changes(path, cursor.inode, cursor.offset, data, cursor.meta_stamp, "new line")
    header = to_record(path, read_meta(path), ()) if changed else None
    return SessionChanges(new, tuple(messages), True, header)
