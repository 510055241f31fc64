"""The file session store: the shared contract plus crash, concurrency and safety tests."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import oblix_file.files
from oblix_core.errors import (
    InvalidSessionIdError,
    SessionCorruptedError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.sessions.records import Message, SessionRecord, new_session_id, utc_now
from oblix_core.sessions.store import SessionStore
from oblix_core.testing import SessionStoreContract
from oblix_file.index import PENDING, Summary
from oblix_file.store import INDEX, MESSAGES, META, FileSessionStore, FileStoreError


class TestFileStoreContract(SessionStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileSessionStore:
        return FileSessionStore(tmp_path / "sessions")

    def damage_session(self, store: SessionStore, session_id: str) -> None:
        assert isinstance(store, FileSessionStore)
        (store.root / session_id / META).write_text('{"created_at": "yesterday", "title": 7}')


@pytest.fixture
def store(tmp_path: Path) -> FileSessionStore:
    return FileSessionStore(tmp_path / "sessions")


def _new(store: FileSessionStore, **kwargs: object) -> str:
    record = SessionRecord(id=new_session_id(), **kwargs)  # type: ignore[arg-type]
    store.create(record)
    return record.id


def test_append_does_not_rewrite_history(store: FileSessionStore) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "first")])
    path = store.root / sid / MESSAGES
    before = path.read_bytes()
    inode = path.stat().st_ino
    store.append_messages(sid, [Message("user", "second")])
    after = path.read_bytes()
    assert path.stat().st_ino == inode  # same file, not a replacement
    assert after.startswith(before) and len(after) > len(before)


def test_torn_last_line_is_ignored_then_repaired(store: FileSessionStore) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "kept")])
    with open(store.root / sid / MESSAGES, "ab") as handle:
        handle.write(b'{"id": "msg_torn", "role": "user", "cont')  # a writer died here
    assert [m.content for m in store.load(sid).messages] == ["kept"]
    store.append_messages(sid, [Message("assistant", "after")])
    assert [m.content for m in store.load(sid).messages] == ["kept", "after"]


def test_corrupted_session_is_isolated(store: FileSessionStore) -> None:
    good = _new(store, title="good")
    bad_meta = _new(store, title="bad meta")
    bad_line = _new(store, title="bad line")
    (store.root / bad_meta / META).write_text("{not json")
    store.append_messages(bad_line, [Message("user", "a"), Message("user", "b")])
    raw = (store.root / bad_line / MESSAGES).read_bytes().split(b"\n")
    raw[0] = b"garbage"
    (store.root / bad_line / MESSAGES).write_bytes(b"\n".join(raw))
    with pytest.raises(SessionCorruptedError, match=bad_meta):
        store.load(bad_meta)
    with pytest.raises(SessionCorruptedError, match="line 1"):
        store.load(bad_line)
    assert store.load(good).title == "good"
    assert {s["id"] for s in store.list()} >= {good}
    assert store.rebuild_index() == 2  # the unreadable meta is left out; the listing survives


def test_path_escape_attempts_write_nothing(tmp_path: Path, store: FileSessionStore) -> None:
    for bad in ["../outside", "../../etc/x", "/tmp/abs", "a/../../b", "ok\x00", "..\\x"]:
        with pytest.raises(InvalidSessionIdError):
            store.create(SessionRecord(id=bad))
        with pytest.raises(InvalidSessionIdError):
            store.append_messages(bad, [Message("user", "x")])
    outside = [p for p in tmp_path.iterdir() if p.name != "sessions"]
    assert outside == []


def test_failed_create_keeps_the_index_row_and_phantom_rows_are_replaced(store: FileSessionStore) -> None:
    sid = _new(store, title="original")
    with pytest.raises(SessionExistsError):
        store.create(SessionRecord(id=sid, title="intruder"))
    assert [s["title"] for s in store.list()] == ["original"]
    phantom = new_session_id()  # an index row whose create died before the rename
    store._index.insert(Summary(phantom, "ghost", utc_now(), utc_now(), 0, {}, 0, "0:0:0"))
    assert phantom not in {s["id"] for s in store.list()}
    store.create(SessionRecord(id=phantom, title="real"))
    assert {s["title"] for s in store.list()} == {"original", "real"}


def test_index_is_rebuilt_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    first = FileSessionStore(root)
    sid = _new(first, title="survivor", metadata={"k": "v"})
    first.append_messages(sid, [Message("user", "x")])
    first.close()
    for suffix in ("", "-wal", "-shm"):
        (root / (INDEX + suffix)).unlink(missing_ok=True)
    second = FileSessionStore(root)
    assert [(s["id"], s["message_count"]) for s in second.list(filter_metadata={"k": "v"})] == [(sid, 1)]


WRITER = textwrap.dedent(
    """
    import sys
    from oblix_file.store import FileSessionStore
    from oblix_core.sessions.records import Message
    store = FileSessionStore(sys.argv[1])
    sid, tag, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
    for i in range(count):
        store.append_messages(sid, [Message("user", f"{tag}-{i}-q"), Message("assistant", f"{tag}-{i}-a")])
        print(f"{tag}-{i}", flush=True)
    """
)


def _writer(root: Path, sid: str, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), sid, tag, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _pairs_are_contiguous(contents: list[str]) -> None:
    assert len(contents) % 2 == 0
    for q, a in zip(contents[::2], contents[1::2], strict=True):
        assert q.endswith("-q") and a == q[:-1] + "a", (q, a)


def test_concurrent_writer_processes_lose_nothing(store: FileSessionStore) -> None:
    sid = _new(store)
    writers = [_writer(store.root, sid, f"p{n}", 40) for n in range(3)]
    for w in writers:
        assert w.wait(120) == 0
    contents = [m.content for m in store.load(sid).messages]
    assert len(contents) == 240
    _pairs_are_contiguous(contents)
    assert store.list()[0]["message_count"] == 240


def test_meta_file_holds_only_session_fields(store: FileSessionStore) -> None:
    sid = _new(store, metadata={"a": 1})
    meta = json.loads((store.root / sid / META).read_text())
    assert set(meta) == {"title", "created_at", "updated_at", "context", "metadata"}


# -- complete or not acknowledged --------------------------------------------------------


class ShortWriteDouble:
    """Fault-injection double for ``os.write``: on the log's fd, writes only part of the
    first buffer, then fails with ``errno`` (or, with ``errno=None``, lets the rest through).
    Every other fd is written for real."""

    def __init__(self, log_path: Path, errno_: int | None) -> None:
        self.log_path = log_path
        self.errno = errno_
        self.calls = 0
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") != str(self.log_path):
            return self.real(fd, data)
        self.calls += 1
        if self.calls == 1:
            return self.real(fd, bytes(data)[: max(1, len(data) // 2)])
        if self.errno is not None:
            raise OSError(self.errno, os.strerror(self.errno))
        return self.real(fd, data)


def test_short_write_then_full_disk_leaves_the_log_exactly_as_it_was(
    store: FileSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "kept")])
    log_path = store.root / sid / MESSAGES
    before = log_path.read_bytes()
    double = ShortWriteDouble(log_path, errno.ENOSPC)
    monkeypatch.setattr(oblix_file.files.os, "write", double)
    with pytest.raises(FileStoreError, match="No space left on device") as caught:
        store.append_messages(sid, [Message("user", "lost-q"), Message("assistant", "lost-a")])
    monkeypatch.undo()
    assert double.calls == 2
    assert str(log_path) in str(caught.value) and "Nothing was stored" in str(caught.value)
    assert caught.value.stored is False
    assert log_path.read_bytes() == before  # truncated back: the half line is gone
    store.append_messages(sid, [Message("user", "next")])
    assert [m.content for m in store.load(sid).messages] == ["kept", "next"]
    assert store.list()[0]["message_count"] == 2


def test_short_writes_are_continued(store: FileSessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = _new(store)
    double = ShortWriteDouble(store.root / sid / MESSAGES, None)
    monkeypatch.setattr(oblix_file.files.os, "write", double)
    store.append_messages(sid, [Message("user", "q" * 5000), Message("assistant", "a" * 5000)])
    monkeypatch.undo()
    assert double.calls == 2
    assert [len(m.content) for m in store.load(sid).messages] == [5000, 5000]


def test_a_failed_fsync_is_not_acknowledged(store: FileSessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = _new(store)
    log_path = store.root / sid / MESSAGES
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:  # fault-injection double: the log's fsync reports EIO once
        if os.readlink(f"/proc/self/fd/{fd}") == str(log_path) and not calls:
            calls.append(fd)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    calls: list[int] = []
    monkeypatch.setattr(oblix_file.files.os, "fsync", failing_fsync)
    with pytest.raises(FileStoreError, match="I/O error"):
        store.append_messages(sid, [Message("user", "x")])
    monkeypatch.undo()
    assert log_path.read_bytes() == b""
    assert store.load(sid).messages == ()


# -- the files are the truth; the index converges -------------------------------------


def test_an_index_failure_after_the_append_is_acknowledged_and_repaired(
    store: FileSessionStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "a")])

    def full(*args: object, **kwargs: object) -> bool:  # fault-injection double: SQLite's disk is full
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store._index, "record_append", full)
    store.append_messages(sid, [Message("user", "b"), Message("assistant", "c")])  # no error: it is stored
    monkeypatch.undo()
    assert "was stored, but the listing index could not be updated" in caplog.text
    assert [m.content for m in store.load(sid).messages] == ["a", "b", "c"]
    assert store.list()[0]["message_count"] == 3
    store.append_messages(sid, [Message("user", "d")])  # the stale row is re-counted, not incremented
    assert store.list()[0]["message_count"] == 4


def test_listing_converges_after_a_crash_between_the_log_and_the_index(store: FileSessionStore) -> None:
    sid = _new(store, title="t")
    store.append_messages(sid, [Message("user", "a")])
    late = Message("assistant", "written, then the writer died", timestamp="2999-01-01T00:00:00Z")
    with open(store.root / sid / MESSAGES, "ab") as handle:  # what a writer killed before the index did
        handle.write(json.dumps(late.to_dict()).encode() + b"\n" + b'{"torn')
    [summary] = store.list()
    assert summary["message_count"] == len(store.load(sid).messages) == 2
    assert summary["updated_at"] == late.timestamp
    reopened = FileSessionStore(store.root)
    assert reopened.list()[0]["message_count"] == 2  # the repair was stored
    assert [row.message_count for row in reopened._index.summaries()] == [2]


def test_listing_converges_after_a_crash_between_meta_and_the_index(
    store: FileSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = _new(store, metadata={"state": "open"})
    monkeypatch.setattr(store, "_index_metadata", lambda *args: None)  # the writer dies after the replace
    store.update_metadata(sid, {"state": "closed"})
    monkeypatch.undo()
    assert [s["id"] for s in store.list(filter_metadata={"state": "closed"})] == [sid]
    assert store.list(filter_metadata={"state": "open"}) == []
    assert [row.meta_stamp != PENDING for row in store._index.summaries()] == [True]  # settled
    assert [s["id"] for s in FileSessionStore(store.root).list(filter_metadata={"state": "closed"})] == [sid]


def test_a_hand_edited_meta_file_shows_in_listings(store: FileSessionStore) -> None:
    sid = _new(store, title="before")
    meta = json.loads((store.root / sid / META).read_text())
    meta["title"] = "after"
    (store.root / sid / META).write_text(json.dumps(meta))
    assert [s["title"] for s in store.list()] == ["after"]


def test_a_metadata_index_failure_is_acknowledged(
    store: FileSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = _new(store, metadata={"state": "open"})

    def locked(*args: object, **kwargs: object) -> bool:  # fault-injection double: the index is locked
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store._index, "record_metadata", locked)
    store.update_metadata(sid, {"state": "closed"})
    monkeypatch.undo()
    assert store.get_metadata(sid) == {"state": "closed"}
    assert [s["metadata"] for s in store.list()] == [{"state": "closed"}]


def test_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    first = FileSessionStore(root)
    sid = _new(first, title="t")
    first.close()
    for suffix in ("-wal", "-shm"):
        (root / (INDEX + suffix)).unlink(missing_ok=True)
    (root / INDEX).write_bytes(b"this is not a database" * 100)
    assert [s["id"] for s in FileSessionStore(root).list()] == [sid]


# -- the store's own files, missing ids, temp files --------------------------------------


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"])
def test_ids_named_like_index_files_never_touch_the_index(store: FileSessionStore, name: str) -> None:
    sid = _new(store, title="other")
    store.list()
    before = _tree(store.root)
    assert store.delete(name) is False
    with pytest.raises(SessionNotFoundError):
        store.update_metadata(name, {"a": 1})
    with pytest.raises(SessionNotFoundError):
        store.append_messages(name, [Message("user", "x")])
    assert _tree(store.root) == before
    store.create(SessionRecord(id=name, title="named like a store file"))
    store.append_messages(name, [Message("user", "x")])
    store.update_metadata(name, {"a": 1})
    assert {s["id"]: s["message_count"] for s in store.list()} == {sid: 0, name: 1}
    assert store.delete(name) is True
    assert [s["id"] for s in FileSessionStore(store.root).list()] == [sid]


def test_an_index_of_the_old_name_is_dropped_as_a_cache(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    sid = _new(FileSessionStore(root), title="kept")
    for name in ("index.sqlite3", "index.sqlite3-wal"):
        (root / name).write_bytes(b"an index written by an older Oblix")
    store = FileSessionStore(root)
    assert not (root / "index.sqlite3").exists() and not (root / "index.sqlite3-wal").exists()
    assert store.delete("index.sqlite3") is False
    assert [s["id"] for s in store.list()] == [sid]


def test_operations_on_a_missing_session_create_nothing(store: FileSessionStore) -> None:
    _new(store)
    before = _tree(store.root)
    missing = new_session_id()
    assert store.delete(missing) is False
    assert store.exists(missing) is False
    for call in (
        lambda: store.update_metadata(missing, {"a": 1}),
        lambda: store.append_messages(missing, [Message("user", "x")]),
        lambda: store.load(missing),
        lambda: store.load_recent(missing, 3),
        lambda: store.get_metadata(missing),
    ):
        with pytest.raises(SessionNotFoundError):
            call()
    assert _tree(store.root) == before


def test_a_delete_racing_appends_leaves_no_stray_folder(store: FileSessionStore) -> None:
    def writer(sid: str) -> None:
        for _ in range(50):
            try:
                store.append_messages(sid, [Message("user", "x")])
            except SessionNotFoundError:
                return

    for _ in range(5):
        sid = _new(store)
        threads = [threading.Thread(target=writer, args=(sid,)) for _ in range(3)]
        for t in threads:
            t.start()
        assert store.delete(sid) is True
        for t in threads:
            t.join()
        assert not (store.root / sid).exists()
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".")] == []


def test_stale_temp_files_of_every_kind_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    store = FileSessionStore(root)
    sid = _new(store)
    old = time.time() - 7200
    stale = [root / ".new-0a", root / ".trash-0b", root / ".tmp-0c", root / sid / ".meta.json.0d.tmp"]
    fresh = [root / ".new-1a", root / ".tmp-1c", root / sid / ".meta.json.1d.tmp"]
    for path in stale + fresh:
        if path.name.startswith((".new-", ".trash-")):
            path.mkdir()
            (path / META).write_text("{}")
        else:
            path.write_text("{}")
    for path in stale:
        os.utime(path, (old, old))
    FileSessionStore(root)
    store.update_metadata(sid, {"a": 1})  # sweeps the session's own folder
    assert [p for p in stale if p.exists()] == []
    assert [p for p in fresh if not p.exists()] == []


def test_close_releases_the_connections_of_every_thread(store: FileSessionStore) -> None:
    sid = _new(store)

    def index_fds() -> int:  # the index and its WAL, under whatever name
        return sum(f.path.startswith(str(store.root)) for f in psutil.Process().open_files())

    done = threading.Barrier(9)
    release = threading.Event()

    def worker(n: int) -> None:
        for i in range(10):
            store.append_messages(sid, [Message("user", f"{n}-{i}")])
            store.list()
        done.wait(60)
        release.wait(60)  # stay alive, like an idle worker-thread pool after shutdown()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    done.wait(60)
    assert index_fds() >= 8
    store.close()
    assert index_fds() == 0
    release.set()
    for t in threads:
        t.join()
    assert store.list()[0]["message_count"] == 80  # usable again: connections reopen
    store.close()
    assert index_fds() == 0


def test_contains_path(store: FileSessionStore, tmp_path: Path) -> None:
    sid = _new(store)
    link = tmp_path / "link"
    link.symlink_to(store.root / sid)
    assert store.contains_path(store.root)
    assert store.contains_path(store.root / sid / MESSAGES)
    assert store.contains_path(str(link / MESSAGES))
    assert store.contains_path(store.root / "not-yet" / "x.json")
    assert not store.contains_path(tmp_path / "export.json")
    assert not store.contains_path(Path(f"{store.root}2") / "x.json")  # a sibling sharing the prefix


# -- read-only and unwritable roots ------------------------------------------------------


PROBE = textwrap.dedent(
    """
    import json, sys
    from oblix_core.sessions.records import Message, SessionRecord
    from oblix_file.store import FileSessionStore
    root, sid = sys.argv[1], sys.argv[2]
    out = {}
    def attempt(name, call):
        try:
            out[name] = ["ok", repr(call())]
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__]]
    store = None
    def open_store():
        global store
        store = FileSessionStore(root)
    attempt("open", open_store)
    if store is not None:
        attempt("list", lambda: [(s["id"], s["message_count"]) for s in store.list()])
        attempt("load", lambda: [m.content for m in store.load(sid).messages])
        attempt("get_metadata", lambda: store.get_metadata(sid))
        attempt("create", lambda: store.create(SessionRecord(id="new-one")))
        attempt("append", lambda: store.append_messages(sid, [Message("user", "x")]))
        attempt("update_metadata", lambda: store.update_metadata(sid, {"b": 2}))
        attempt("delete", lambda: store.delete(sid))
    print(json.dumps(out))
    """
)


def _probe(root: Path, sid: str, prefix: list[str]) -> dict[str, list[Any]]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, str(root), sid], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_reads_work_and_writes_fail_clearly(
    outcome: dict[str, list[Any]], sid: str, root: Path, cause: str
) -> None:
    assert outcome["open"][0] == "ok", outcome["open"]
    assert outcome["list"] == ["ok", repr([(sid, 1)])]
    assert outcome["load"] == ["ok", repr(["hello"])]
    assert outcome["get_metadata"] == ["ok", repr({"a": 1})]
    for name in ("create", "append", "update_metadata", "delete"):
        kind, message, mro = outcome[name]
        assert kind == "FileStoreError" and "OblixError" in mro, outcome[name]
        assert str(root) in message and cause in message, message


def _seed(root: Path) -> str:
    store = FileSessionStore(root)
    sid = _new(store, metadata={"a": 1})
    store.append_messages(sid, [Message("user", "hello")])
    store.close()
    return sid


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a folder, a read-only bind mount of it), or skip when mounting is refused."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (the file-mode variant below runs instead)")
    mounted = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind was refused: {mounted.stderr.strip()}")
    try:
        remount = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(view)], capture_output=True, text=True
        )
        if remount.returncode != 0:
            pytest.skip(f"a read-only remount was refused: {remount.stderr.strip()}")
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.mark.parametrize("keep_index", [True, False], ids=["index-readable", "index-missing"])
def test_a_read_only_file_system_serves_reads_and_refuses_writes_clearly(
    read_only_view: tuple[Path, Path], keep_index: bool
) -> None:
    source, view = read_only_view
    sid = _seed(source / "sessions")
    if not keep_index:
        for suffix in ("", "-wal", "-shm"):
            (source / "sessions" / (INDEX + suffix)).unlink(missing_ok=True)
    outcome = _probe(view / "sessions", sid, [])
    _assert_reads_work_and_writes_fail_clearly(outcome, sid, view / "sessions", "Read-only file system")
    assert _tree(source / "sessions") >= {sid, f"{sid}/{META}"}


def test_permission_denied_serves_reads_and_refuses_writes_clearly(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    sid = _seed(root)
    prefix = []
    if os.geteuid() == 0:  # root ignores file modes unless it drops CAP_DAC_OVERRIDE
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override", "--"]
    paths = [root, *root.rglob("*")]  # folders r-x, files r--, as if owned by someone else
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        outcome = _probe(root, sid, prefix)
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
    _assert_reads_work_and_writes_fail_clearly(outcome, sid, root, "Permission denied")


def test_an_unusable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FileStoreError, match=rf"{re.escape(str(blocker))}.*(Not a directory|File exists)"):
        FileSessionStore(blocker / "sessions")


def test_a_metadata_update_the_index_cannot_flag_is_refused_unchanged(
    store: FileSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = _new(store, metadata={"state": "open"})

    def full(*args: object) -> None:  # fault-injection double: SQLite's disk is full
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store._index, "mark_pending", full)
    with pytest.raises(FileStoreError, match=r"database or disk is full.*metadata is unchanged"):
        store.update_metadata(sid, {"state": "closed"})
    monkeypatch.undo()
    assert store.get_metadata(sid) == {"state": "open"}
    assert [s["metadata"] for s in store.list()] == [{"state": "open"}]


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (lambda lines: lines.__setitem__(150, lines[150][:-1]), 151),  # a line cut short
        (lambda lines: lines.__setitem__(7, lines[7] + b',{"role":"user","content":"x"}'), 8),  # two objects
        (lambda lines: lines.__setitem__(3, lines[3].replace(b'"user"', b"5")), 4),  # a wrong type
    ],
)
def test_a_load_parsed_in_one_go_still_names_the_bad_line(
    store: FileSessionStore, damage: Any, line: int
) -> None:
    """Loads parse the log in few JSON calls; a damaged line is still found and named."""
    sid = _new(store, title="long")
    store.append_messages(sid, [Message("user", f"m{i}") for i in range(300)])
    assert [m.content for m in store.load(sid).messages] == [f"m{i}" for i in range(300)]
    lines = (store.root / sid / MESSAGES).read_bytes().split(b"\n")
    damage(lines)
    (store.root / sid / MESSAGES).write_bytes(b"\n".join(lines))
    with pytest.raises(SessionCorruptedError, match=f"line {line} of"):
        store.load(sid)


def test_two_damaged_lines_that_parse_together_are_not_taken_for_messages(store: FileSessionStore) -> None:
    sid = _new(store, title="t")
    store.append_messages(sid, [Message("user", "a"), Message("user", "b"), Message("user", "c")])
    lines = (store.root / sid / MESSAGES).read_bytes().split(b"\n")
    lines[0] = lines[0][:-1] + b', "x": '  # only valid JSON joined with the next line
    (store.root / sid / MESSAGES).write_bytes(b"\n".join(lines))
    with pytest.raises(SessionCorruptedError, match="line 1 of"):
        store.load(sid)


def test_a_writer_holding_the_lock_through_filelock_makes_an_append_wait(store: FileSessionStore) -> None:
    """Appends take the session lock with one flock when it is free; held by a writer that
    took it through filelock (an older Oblix, or a metadata update), the append waits."""
    import filelock

    sid = _new(store, title="t")
    held = filelock.FileLock(store.root / sid / ".lock")
    held.acquire()
    done = threading.Event()
    writer = threading.Thread(target=lambda: (store.append_messages(sid, [Message("user", "x")]), done.set()))
    writer.start()
    assert not done.wait(0.3)
    held.release()
    writer.join(10)
    assert done.is_set() and [m.content for m in store.load(sid).messages] == ["x"]
