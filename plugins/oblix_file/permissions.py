"""Keeping a file store private to its user: folders ``0700``, files ``0600``.

New folders and files are created with those modes (the umask can only narrow them).
A store written by an older version, or copied with looser modes, is tightened when it
is opened: every session folder and every file in it, the index and the root. The root
is tightened last, so a store whose root is already private is not walked again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from oblix_file.files import DIR_MODE, FILE_MODE

log = logging.getLogger(__name__)


def make_private(root: Path) -> None:
    """Tighten ``root`` and everything in it to ``0700``/``0600`` if the root is not private yet."""
    try:
        if stat.S_IMODE(os.stat(root).st_mode) & 0o077 == 0:
            return
        _tighten_folder(root, depth=1)
        os.chmod(root, DIR_MODE)
    except OSError as exc:  # not ours, or a read-only mount: leave it, it still works
        log.warning("could not make the session folder %s private to its user: %s", root, exc)


def _tighten_folder(folder: Path, depth: int) -> None:
    """``chmod`` the entries of ``folder`` (and of its sub-folders, ``depth`` levels down)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                continue  # never follow a link out of the store
            if entry.is_dir():
                if depth > 0:
                    _tighten_folder(Path(entry.path), depth - 1)
                _chmod(entry.path, DIR_MODE)
            elif entry.is_file():
                _chmod(entry.path, FILE_MODE)


def _chmod(path: str, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a delete, a sweep)
        os.chmod(path, mode)  # not a symlink: checked by the caller
