"""Writing files so that readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, fsync_dir: bool = True) -> None:
    """Write ``data`` to a uniquely named temp file beside ``path``, fsync it, rename it over ``path``.

    Concurrent writers to one path each use their own temp file (the last rename wins);
    the temp file is removed if anything fails. Raises ``OSError``.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
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
