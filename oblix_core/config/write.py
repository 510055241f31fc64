"""Changing ``config.toml`` safely: comments and layout kept (tomlkit), the result checked
against the schema before it is written, one writer at a time, and an atomic replace.

Used by ``oblix aliases set``, ``oblix models default`` and ``oblix models options set``.
Oblix never writes API keys here.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import tomlkit
from tomlkit.items import AoT, Table

from oblix_core.config.settings import CONFIG_FILE, load_config, oblix_home, validate
from oblix_core.errors import ConfigError
from oblix_core.fileio import write_atomically

#: Seconds to wait for another process changing the file.
LOCK_TIMEOUT = 10.0


def config_path(home: Path | None = None) -> Path:
    return (home or oblix_home()) / CONFIG_FILE


def update_config(change: Callable[[tomlkit.TOMLDocument], object], home: Path | None = None) -> Path:
    """Apply ``change`` to the parsed ``config.toml`` (created if missing) and write it back.

    The new text is checked like any config file before it replaces the old one: an
    invalid result raises :class:`ConfigError` and leaves the file as it was.
    """
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = str(path.with_name(f".{path.name}.lock"))
    lock = filelock.FileLock(lock_file, timeout=LOCK_TIMEOUT, mode=0o600)
    try:
        with lock:
            try:
                old = path.read_text(encoding="utf-8")
                mode = stat.S_IMODE(os.stat(path).st_mode) & 0o600 or 0o600  # never others' to read
            except FileNotFoundError:
                old, mode = "", 0o600
            try:
                document = tomlkit.parse(old)
            except tomlkit.exceptions.ParseError as exc:
                raise ConfigError(f"Cannot read {path}: {exc}. Fix the file, then try again.") from None
            change(document)
            text = tomlkit.dumps(document)
            validate(tomllib.loads(text), path)
            write_atomically(path, text.encode("utf-8"), mode=mode)
    except filelock.Timeout:
        raise ConfigError(f"{path} is being changed by another oblix command; try again.") from None
    load_config(path.parent)  # the file as written reads back (the loaders' own checks)
    return path


def table(document: tomlkit.TOMLDocument, name: str) -> Table:
    """The top-level table ``name``, added at the end when missing."""
    found = document.get(name)
    if found is None:
        found = tomlkit.table()
        document.add(name, found)
    if not isinstance(found, Table):
        raise ConfigError(f"{name} in config.toml must be a table, written [{name}].")
    return found


def model_entries(document: tomlkit.TOMLDocument) -> list[Any]:
    """The ``[[models]]`` tables of ``document`` (an empty list when there are none)."""
    found = document.get("models")
    if found is None:
        return []
    if not isinstance(found, AoT | list):
        raise ConfigError("models in config.toml must be written as [[models]] tables.")
    return list(found)
