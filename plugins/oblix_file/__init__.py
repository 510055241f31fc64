"""The file session store, Oblix's embedded default (``session_store="file"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl
from oblix_file.store import FileSessionStore, FileStoreError

__all__ = ["FileSessionStore", "FileStoreError"]


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("file", FileSessionStore)
