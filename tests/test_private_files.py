"""Conversations on disk are private to the user: folders 0700, files 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.models.health import JsonFile
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.usage.ledger import UsageRecord
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_file.store import FileSessionStore


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask (0): every mode a test sees was asked for explicitly."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _loose(root: Path) -> list[str]:
    """Every entry under ``root`` (the root included) readable by others than the user."""
    found = [] if _mode(root) == 0o700 else [f"{root} {_mode(root):o}"]
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            if _mode(Path(folder, name)) != 0o700:
                found.append(f"{folder}/{name} {_mode(Path(folder, name)):o}")
        for name in files:
            if _mode(Path(folder, name)) != 0o600:
                found.append(f"{folder}/{name} {_mode(Path(folder, name)):o}")
    return found


def _fill(store: FileSessionStore) -> None:
    store.create(SessionRecord(id="a", title="secret", messages=(Message("user", "my password is x"),)))
    store.create(SessionRecord(id="b"))
    store.append_messages("b", [Message("user", "hello")])
    store.update_metadata("a", {"local_only": True})
    assert {s["id"] for s in store.list()} == {"a", "b"}


@pytest.mark.usefixtures("open_umask")
def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path / "sessions")
    try:
        _fill(store)
        names = {p.name for p in (tmp_path / "sessions").iterdir()}
        assert {".index.sqlite3", ".index.sqlite3-wal", "a", "b"} <= names
        assert _loose(tmp_path / "sessions") == []
    finally:
        store.close()


@pytest.mark.usefixtures("open_umask")
def test_the_usage_ledgers_are_private_whatever_the_umask(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path / "sessions")
    ledgers = [store.usage_ledger(), SqliteUsageLedger(tmp_path / "home" / "usage.sqlite3")]
    try:
        for ledger in ledgers:  # the file store's <root>/.usage.sqlite3, $OBLIX_HOME/usage.sqlite3
            ledger.record(UsageRecord("r1", "scripted:x", True, 1, 1, 0.0))
            assert ledger.totals(date(2000, 1, 1))[0].requests == 1
            path = ledger.path  # type: ignore[attr-defined]
            names = {p.name for p in path.parent.iterdir()}
            assert {path.name, f"{path.name}-wal", f"{path.name}-shm"} <= names  # open: WAL files exist
        assert _loose(tmp_path / "sessions") == []
        home = tmp_path / "home"
        assert {p.name: _mode(p) for p in home.iterdir()} == {
            "usage.sqlite3": 0o600,
            "usage.sqlite3-wal": 0o600,
            "usage.sqlite3-shm": 0o600,
        }
    finally:
        for ledger in ledgers:
            ledger.close()
        store.close()


def test_a_loose_home_ledger_is_tightened_on_open(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    first = SqliteUsageLedger(path)
    first.record(UsageRecord("r1", "scripted:x", True, 1, 1, 0.0))
    first.close()
    for name in ("usage.sqlite3", "usage.sqlite3-wal"):  # as an older Oblix left them
        (tmp_path / name).touch()
        os.chmod(tmp_path / name, 0o644)
    ledger = SqliteUsageLedger(path)
    try:
        assert ledger.spent() == 0.0  # opened
        assert _mode(path) == 0o600 and _mode(tmp_path / "usage.sqlite3-wal") == 0o600
    finally:
        ledger.close()


def test_an_existing_store_is_tightened_on_open(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    store = FileSessionStore(root)
    _fill(store)
    store.close()
    for folder, dirs, files in os.walk(root):  # as an older Oblix left it
        for name in dirs:
            os.chmod(Path(folder, name), 0o755)
        for name in files:
            os.chmod(Path(folder, name), 0o644)
    os.chmod(root, 0o755)
    assert _loose(root)
    reopened = FileSessionStore(root)
    try:
        assert _loose(root) == []
        assert reopened.load("a").title == "secret"
    finally:
        reopened.close()


@pytest.mark.anyio
@pytest.mark.usefixtures("open_umask")
async def test_exports_are_private(client: OblixClient, tmp_path: Path) -> None:
    session_id = await client.create_session(title="private", metadata={"local_only": True})
    target = tmp_path / "exports" / "new-folder" / "s.json"
    assert await client.export_session(session_id, str(target))
    assert _mode(target) == 0o600 and _mode(target.parent) == 0o700
    target.write_text("old")
    os.chmod(target, 0o644)
    assert await client.export_session(session_id, str(target))  # overwriting makes it private too
    assert _mode(target) == 0o600 and "private" in target.read_text()


@pytest.mark.usefixtures("open_umask")
def test_health_files_are_private(tmp_path: Path) -> None:
    health = JsonFile(tmp_path / "health.json")
    health.update({"model|http://x": {"failures": 1}})
    assert _mode(tmp_path / "health.json") == 0o600
    assert _mode(tmp_path / "health.json.lock") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_config_written_by_commands_is_private(tmp_path: Path) -> None:
    from oblix_core.config.write import update_config

    home = tmp_path / "home"
    home.mkdir()
    loose = home / "config.toml"
    loose.write_text('[aliases]\nold = "llama_cpp:gemma-3-270m"\n')
    loose.chmod(0o666)  # left world-writable by hand or by an older tool
    update_config(lambda doc: doc["aliases"].update(fast="llama_cpp:gemma-3-270m"), home)
    assert _mode(loose) == 0o600
    assert _mode(home / ".config.toml.lock") == 0o600
    fresh = tmp_path / "fresh"
    update_config(lambda doc: doc.update(aliases={"x": "openai:m"}), fresh)
    assert _mode(fresh / "config.toml") == 0o600
