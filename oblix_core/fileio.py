"""Writing files so that readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, fsync_dir: bool = True, mode: int = 0o666) -> None:
    """Write ``data`` to a uniquely named temp file beside ``path``, fsync it, rename it over ``path``.

    Concurrent writers to one path each use their own temp file (the last rename wins);
    the temp file is removed if anything fails. The file is created with ``mode`` (less
    the umask): ``0o600`` keeps it private to the user. Raises ``OSError``.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync_dir:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
