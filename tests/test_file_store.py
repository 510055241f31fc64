"""The file session store: the shared contract plus crash, concurrency and safety tests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oblix_core.errors import InvalidSessionIdError, SessionCorruptedError, SessionExistsError
from oblix_core.records import Message, SessionRecord, new_session_id, utc_now
from oblix_core.testing import SessionStoreContract
from oblix_file.index import Summary
from oblix_file.store import INDEX, MESSAGES, META, FileSessionStore


class TestFileStoreContract(SessionStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileSessionStore:
        return FileSessionStore(tmp_path / "sessions")


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
    from oblix_core.records import Message
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
