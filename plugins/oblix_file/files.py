"""Low-level file I/O of the file store: complete writes, torn-tail repair, clear errors."""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path

from oblix.plugin import SessionError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Conversations are private to the user: session folders ``0700``, files ``0600``.
DIR_MODE = 0o700
FILE_MODE = 0o600

#: How a cause is explained to the user, by errno.
_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and retry",
    errno.EDQUOT: "the disk quota is exhausted; free some space and retry",
    errno.EROFS: "the file system is read-only; point OBLIX_HOME at a writable folder",
    errno.EACCES: "permission denied; fix the folder's permissions or point OBLIX_HOME elsewhere",
    errno.EPERM: "permission denied; fix the folder's permissions or point OBLIX_HOME elsewhere",
    errno.EIO: "the disk reported an I/O error; check the device",
}


class FileStoreError(SessionError):
    """A file-store operation failed on the file system (full disk, read-only folder...).

    ``stored`` says whether the data of the failed call was stored anyway
    (``False``: nothing changed, retrying is safe).
    """

    def __init__(self, message: str, *, path: Path | str, stored: bool = False) -> None:
        super().__init__(message)
        self.path = str(path)
        self.stored = stored


def describe_os_error(exc: BaseException) -> str:
    """``<strerror> (<hint>)`` for an OSError, or the text of any other exception."""
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = exc.strerror or os.strerror(exc.errno)
        hint = _HINTS.get(exc.errno)
        return f"{cause} ({hint})" if hint else cause
    return str(exc)


def io_error(what: str, path: Path | str, exc: BaseException, *, outcome: str) -> FileStoreError:
    """A :class:`FileStoreError` saying what failed, where, why, and what happened to the data."""
    message = f"{what}: {path}: {describe_os_error(exc)}."
    return FileStoreError(f"{message} {outcome}" if outcome else message, path=path)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``, looping over short writes.

    ``os.write`` may write fewer bytes than asked (a nearly full disk, a signal); a
    write that makes no progress at all is reported as a full disk.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (exclusively, private: ``0600``) holding ``data``, fsynced; removed if that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)


def remove_quietly(path: Path) -> None:
    with suppress(OSError):
        os.unlink(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_complete(fd: int, data: bytes) -> int:
    """Append ``data`` to the log open as ``fd``, fsynced; returns the log's size before it.

    An unterminated last line (left by a writer killed mid-append) is cut first. If the
    write or the fsync fails, the log is truncated back to its size before the call and
    the error re-raised: a failed append leaves the log exactly as it was. Should the
    truncation fail too, :class:`AppendNotUndone` is raised instead.
    """
    cut_torn_tail(fd)
    before = os.fstat(fd).st_size
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, before)
            os.fsync(fd)
        except OSError as undo:
            raise AppendNotUndone(exc, undo) from exc
        raise
    return before


class AppendNotUndone(OSError):
    """An append failed and truncating the log back failed too (a double fault)."""

    def __init__(self, cause: OSError, undo: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.undo = undo


def cut_torn_tail(fd: int) -> None:
    """Truncate an unterminated last line (left by a writer killed mid-append)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def tail(path: Path, lines: int) -> bytes:
    """The end of ``path`` holding at least its last ``lines`` complete lines (read backwards)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start, block, found = end, 65536, -1  # the final newline ends the last line
        while start > 0 and found <= lines:
            start = max(0, start - block)
            handle.seek(start)
            found = handle.read(end - start).count(b"\n")
        handle.seek(start)
        data = handle.read(end - start)
    if start > 0:  # drop the partial first line
        data = data[data.index(b"\n") + 1 :]
    return data


def stamp(stat: os.stat_result) -> str:
    """A fingerprint of a file version: a replaced or rewritten file gets a new one."""
    return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"


def try_flock(path: Path) -> int | None:
    """The lock file ``path`` opened and locked (``flock``, exclusive) if it is free now.

    This is the lock ``filelock`` takes on the same file (so the two exclude each other,
    across threads and processes), in two system calls. ``None`` when it is held by
    someone else, or cannot be taken this way (no ``flock``, no such folder): the caller
    then waits for it through ``filelock``, with its timeout and fallbacks.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release_flock(fd: int) -> None:
    """Release a lock taken by :func:`try_flock`."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
