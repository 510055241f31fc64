"""File store fault trials: writer processes killed with SIGKILL, and a real full disk (tmpfs).

The counts and outcomes are recorded in docs/reliability.md.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from oblix_core.errors import SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_file.index import PENDING
from oblix_file.store import INDEX, MESSAGES, META, FileSessionStore, FileStoreError

KILL_TRIALS = 60

# Each writer appends user/assistant pairs to a shared session, updates its metadata,
# and creates and deletes sessions of its own, printing a line once each call returned.
WRITER = textwrap.dedent(
    """
    import sys
    from oblix_core.sessions.records import Message, SessionRecord
    from oblix_file.store import FileSessionStore
    store = FileSessionStore(sys.argv[1])
    sid, tag = sys.argv[2], sys.argv[3]
    for i in range(100_000):
        store.append_messages(sid, [Message("user", f"{tag}-{i}-q"), Message("assistant", f"{tag}-{i}-a")])
        print("A", f"{tag}-{i}", flush=True)
        if i % 3 == 0:
            store.update_metadata(sid, {tag: i})
            print("M", tag, i, flush=True)
        if i % 4 == 1:
            created = f"{tag}-c{i}"
            store.create(SessionRecord(id=created, messages=(Message("user", created),)))
            print("C", created, flush=True)
        if i % 8 == 5:
            store.delete(f"{tag}-c{i - 4}")
            print("D", f"{tag}-c{i - 4}", flush=True)
    """
)


def _start(root: Path, sid: str, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), sid, tag], stdout=subprocess.PIPE, text=True
    )


def _acknowledged(writer: subprocess.Popen[str], first: str) -> list[list[str]]:
    assert writer.stdout is not None
    return [line.split() for line in [first, *writer.stdout] if line.endswith("\n")]


def _check_session(store: FileSessionStore, sid: str, acks: list[list[str]]) -> None:
    contents = [m.content for m in store.load(sid).messages]  # never unreadable
    assert len(contents) % 2 == 0
    for q, a in zip(contents[::2], contents[1::2], strict=True):  # nothing interleaved
        assert q.endswith("-q") and a == q[:-1] + "a", (q, a)
    stored = {c[:-2] for c in contents}
    assert {ack[1] for ack in acks if ack[0] == "A"} <= stored  # nothing acknowledged is lost
    metadata = store.get_metadata(sid)
    for ack in acks:
        if ack[0] == "M":
            assert metadata[ack[1]] >= int(ack[2])


def _check_listing(store: FileSessionStore, acks: list[list[str]], prefixes: tuple[str, ...] = ("",)) -> None:
    listed = {s["id"]: s for s in store.list(limit=10_000) if s["id"].startswith(prefixes)}
    reached = {ack[1].rsplit("-", 1)[0]: int(ack[1].rsplit("-", 1)[1]) for ack in acks if ack[0] == "A"}
    for ack in acks:  # an acknowledged create is listed, unless its delete may have run
        if ack[0] == "C":
            tag, number = ack[1].rsplit("-c", 1)
            if not (int(number) % 8 == 1 and reached[tag] >= int(number) + 4):
                assert ack[1] in listed
    for sid, summary in listed.items():  # the listing equals the files, whatever was killed when
        record = store.load(sid)
        assert summary["message_count"] == len(record.messages), sid
        assert summary["metadata"] == record.metadata, sid


def test_writers_killed_with_sigkill_lose_nothing_and_the_listing_converges(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    store = FileSessionStore(root)
    rng = random.Random(20240607)
    stats: dict[str, int] = defaultdict(int)
    sids = []
    for trial in range(KILL_TRIALS):
        if trial % 10 == 0:
            sids.append(new_session_id())
            store.create(SessionRecord(id=sids[-1]))
        sid = sids[-1]
        writers = [_start(root, sid, f"t{trial}w{n}") for n in range(2)]
        firsts = [w.stdout.readline() if w.stdout else "" for w in writers]  # both are writing now
        for w in writers:  # at a random instant of whatever each is doing
            _kill_after(w, rng.random() * 0.03)
        acks = [ack for w, first in zip(writers, firsts, strict=True) for ack in _acknowledged(w, first)]
        stats["acknowledged calls"] += len(acks)
        stats["torn tails"] += not (root / sid / MESSAGES).read_bytes().endswith(b"\n")
        stats["stale index rows"] += _indexed_count(root, sid) != len(store.load(sid).messages)
        stats["rows left flagged pending"] += _indexed(root, sid, "meta_stamp") == PENDING
        _check_session(store, sid, acks)
        filtered = store.list(limit=10_000, filter_metadata=store.get_metadata(sid))
        assert sid in {s["id"] for s in filtered}  # a filtered listing sees the current metadata
        _check_listing(store, acks, (sid, f"t{trial}w"))
    _check_listing(store, [])
    store.append_messages(sids[-1], [Message("user", "z-q"), Message("assistant", "z-a")])
    assert store.load(sids[-1]).messages[-1].content == "z-a"
    FileSessionStore(root, temp_grace=0)  # a new store sweeps every staging and temp file left
    assert [p.name for p in root.iterdir() if p.name.startswith((".new-", ".trash-", ".tmp-"))] == []
    print(f"\n{KILL_TRIALS} kill trials: {dict(stats)}")
    assert stats["acknowledged calls"] > KILL_TRIALS


def _indexed(root: Path, sid: str, column: str) -> Any:
    """A column of the index file's own row for ``sid`` (before any listing repairs it)."""
    with closing(sqlite3.connect(f"file:{root / INDEX}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT {column} FROM sessions WHERE id = ?", (sid,)).fetchone()[0]


def _indexed_count(root: Path, sid: str) -> int:
    return int(_indexed(root, sid, "message_count"))


def _kill_after(writer: subprocess.Popen[str], delay: float) -> None:
    try:
        writer.wait(delay)
    except subprocess.TimeoutExpired:
        os.kill(writer.pid, signal.SIGKILL)
    writer.wait()


# -- a real full disk ------------------------------------------------------------------------


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` until the file system refuses, then free ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def _seeded(disk: Path) -> tuple[FileSessionStore, str]:
    store = FileSessionStore(disk / "sessions")
    sid = new_session_id()
    store.create(SessionRecord(id=sid, title="t", metadata={"k": "v"}))
    store.append_messages(sid, [Message("user", "before the disk filled")])
    return store, sid


@pytest.mark.parametrize("free", [0, 4096, 16384, 65536, 196608])
def test_an_append_on_a_full_disk_is_refused_and_leaves_the_log_unchanged(
    small_disk: Path, free: int
) -> None:
    store, sid = _seeded(small_disk)
    log_path = store.root / sid / MESSAGES
    before = log_path.read_bytes()
    filler = _fill(small_disk, leave=free)  # the append's first write is short, the next fails
    with pytest.raises(FileStoreError, match="No space left on device") as caught:
        store.append_messages(sid, [Message("user", "q" * 400_000), Message("assistant", "a")])
    assert str(log_path) in str(caught.value) and "Nothing was stored" in str(caught.value)
    assert log_path.read_bytes() == before
    assert [s["message_count"] for s in store.list()] == [1]
    filler.unlink()
    store.append_messages(sid, [Message("user", "after"), Message("assistant", "ok")])
    assert [m.content for m in store.load(sid).messages] == ["before the disk filled", "after", "ok"]
    assert [s["message_count"] for s in store.list()] == [3]


def test_a_full_disk_during_the_index_update_acknowledges_the_stored_append(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, sid = _seeded(small_disk)
    with closing(sqlite3.connect(store.root / INDEX)) as db:  # no spare WAL pages: the update needs space
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = _fill(small_disk)
    with caplog.at_level(logging.WARNING):
        store.append_messages(sid, [Message("user", "fits in the log's last page")])  # no error
    assert "could not be updated" in caplog.text and "full" in caplog.text
    assert [s["message_count"] for s in store.list()] == [2]  # right even while the index is stale
    filler.unlink()
    assert [s["message_count"] for s in store.list()] == [2]
    assert _indexed_count(store.root, sid) == 2  # the repair was stored


def test_create_update_and_open_on_a_full_disk_are_clear_errors(small_disk: Path) -> None:
    store, sid = _seeded(small_disk)
    meta_before = (store.root / sid / META).read_bytes()
    filler = _fill(small_disk)
    with pytest.raises(FileStoreError, match=r"No space left on device.*Nothing was stored"):
        store.create(SessionRecord(id="new-one", messages=(Message("user", "x" * 10_000),)))
    unchanged = r"(No space left|disk is full).*The metadata is unchanged"
    with pytest.raises(FileStoreError, match=rf"{re.escape(str(store.root))}.*{unchanged}"):
        store.update_metadata(sid, {"k": "changed"})
    assert (store.root / sid / META).read_bytes() == meta_before
    with pytest.raises(FileStoreError, match=rf"{re.escape(str(small_disk / 'fresh'))}.*(full|No space)"):
        FileSessionStore(small_disk / "fresh")
    reopened = FileSessionStore(store.root)  # an existing store still opens and reads on a full disk
    assert [(s["id"], s["message_count"]) for s in reopened.list()] == [(sid, 1)]
    assert not store.exists("new-one")
    assert [p.name for p in store.root.iterdir() if p.name.startswith((".new-", ".tmp-"))] == []
    assert store.delete(sid) is True  # deleting frees space even on a full disk
    with pytest.raises(SessionNotFoundError):
        store.load(sid)
    assert store.list() == []
    filler.unlink()
    store.create(SessionRecord(id="new-one"))
    assert [s["id"] for s in store.list()] == ["new-one"]
