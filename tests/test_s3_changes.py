"""The S3 store's ``load_changes`` on moto's S3 server: the warm history's cheap stamp.

Another process or host is played by a second store object on the same bucket and
prefix (it shares no memory, manifest cache included, with the reader). Requests are
counted with botocore event hooks on the reader's real client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oblix import OblixClient
from oblix_core.errors import SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.sessions.store import SessionChanges
from oblix_core.testing import ScriptedPlugin
from oblix_s3.layout import ManifestCursor, segments_from
from oblix_s3.store import S3SessionStore
from tests.conftest import FAST
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures `aws_env`, `server`


@pytest.fixture
def bucket(server: S3Server) -> str:
    return new_bucket(server.url)


@pytest.fixture
def reader(server: S3Server, bucket: str) -> Iterator[S3SessionStore]:
    s3 = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    yield s3
    s3.close()


@pytest.fixture
def writer(server: S3Server, bucket: str) -> Iterator[S3SessionStore]:
    """Another process's store: same bucket and prefix, nothing shared with ``reader``."""
    s3 = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    yield s3
    s3.close()


class Requests:
    """The reader's requests as ``(METHOD, key, status)`` (botocore ``before-send``/``after-call``)."""

    def __init__(self, store: S3SessionStore) -> None:
        self.sent: list[tuple[str, str, int]] = []
        self._pending: list[tuple[str, str]] = []
        self.prefix = f"/{store.bucket}/{store.prefix}sessions/"
        events = store.objects.client.meta.events
        events.register("before-send.s3", self._send)
        events.register("after-call.s3", self._done)

    def _send(self, request: Any, **_: Any) -> None:
        path = request.url.split("?")[0]
        self._pending.append((request.method, path.split(self.prefix, 1)[-1]))

    def _done(self, http_response: Any, **_: Any) -> None:
        method, key = self._pending.pop()
        self.sent.append((method, key, http_response.status_code))

    def take(self) -> list[tuple[str, str, int]]:
        sent, self.sent = self.sent, []
        return sent


def _contents(changes: SessionChanges) -> list[str]:
    return [m.content for m in changes.messages]


def _create(store: S3SessionStore, count: int, **kwargs: Any) -> str:
    record = SessionRecord(
        id=new_session_id(), messages=tuple(Message("user", f"m{i}") for i in range(count)), **kwargs
    )
    store.create(record)
    return record.id


def test_an_append_by_another_store_is_seen_on_the_next_call(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(writer, 3, title="t")
    first = reader.load_changes(sid, None, 10)
    assert not first.continues and _contents(first) == ["m0", "m1", "m2"]
    assert first.header is not None and first.header.title == "t" and first.header.messages == ()
    reader.append_messages(sid, [Message("assistant", "mine")])  # the reader's own manifest cache
    writer.append_messages(sid, [Message("user", "theirs")])  # is stale for this one
    later = reader.load_changes(sid, first.cursor, 10)
    assert later.continues and _contents(later) == ["mine", "theirs"] and later.header is None
    writer.update_metadata(sid, {"local_only": True})
    marked = reader.load_changes(sid, later.cursor, 10)
    assert marked.continues and marked.messages == ()
    assert marked.header is not None and marked.header.metadata == {"local_only": True}
    assert _contents(reader.load_changes(sid, None, 10)) == ["m0", "m1", "m2", "mine", "theirs"]


def test_nothing_changed_costs_one_conditional_get_and_a_change_reads_only_new_segments(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(writer, 2)
    writer.append_messages(sid, [Message("user", "a"), Message("assistant", "b")])
    counter = Requests(reader)
    cursor = reader.load_changes(sid, None, 10).cursor
    counter.take()
    same = reader.load_changes(sid, cursor, 10)
    assert same.continues and same.messages == () and same.header is None and same.cursor == cursor
    assert counter.take() == [("GET", f"{sid}/manifest.json", 304)]
    writer.append_messages(sid, [Message("user", "c")])
    later = reader.load_changes(sid, cursor, 10)
    assert later.continues and _contents(later) == ["c"]
    sent = counter.take()
    assert [(m, k.rsplit("/", 1)[-1][:4], s) for m, k, s in sent] == [
        ("GET", "mani", 200),
        ("GET", "seg-", 200),
    ]
    newest = writer._read_manifest(sid)[1]["segments"][-1]["key"]
    assert sent[1][1] == f"{sid}/{newest}"  # the new segment only, not the older two


def test_reading_back_this_stores_own_append_is_one_conditional_get(reader: S3SessionStore) -> None:
    sid = _create(reader, 2)
    cursor = reader.load_changes(sid, None, 10).cursor
    counter = Requests(reader)
    reader.append_messages(sid, [Message("user", "q"), Message("assistant", "a")])
    counter.take()
    later = reader.load_changes(sid, cursor, 10)
    assert later.continues and _contents(later) == ["q", "a"] and later.header is None
    assert counter.take() == [("GET", f"{sid}/manifest.json", 304)]  # the segment came from memory
    assert reader.load_changes(sid, later.cursor, 10).messages == ()
    assert counter.take() == [("GET", f"{sid}/manifest.json", 304)]


def test_own_appends_and_compactions_read_back_exactly(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(reader, 1)
    changes = reader.load_changes(sid, None, 100)
    seen = _contents(changes)
    for i in range(40):  # max_segments=4: the reader's own compactions merge what it read
        store = writer if i % 5 == 4 else reader
        store.append_messages(sid, [Message("user", f"q{i}"), Message("assistant", f"a{i}")])
        changes = reader.load_changes(sid, changes.cursor, 100)
        assert changes.continues
        seen += _contents(changes)
        assert seen == [m.content for m in writer.load(sid).messages]


def test_compacting_segments_this_store_wrote_reads_none_back(reader: S3SessionStore) -> None:
    sid = _create(reader, 1)
    counter = Requests(reader)
    for i in range(30):  # max_segments=4: many compactions
        reader.append_messages(sid, [Message("user", f"q{i}")])
    sent = counter.take()
    assert [r for r in sent if r[0] == "GET"] == [] and any(r[0] == "POST" for r in sent)  # deletes
    assert [m.content for m in reader.load(sid).messages] == ["m0"] + [f"q{i}" for i in range(30)]


def test_the_first_read_fetches_the_manifest_and_the_tail_segments(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(writer, 2)
    writer.append_messages(sid, [Message("user", "a"), Message("assistant", "b")])
    counter = Requests(reader)
    changes = reader.load_changes(sid, None, 10)
    assert _contents(changes) == ["m0", "m1", "a", "b"]
    sent = counter.take()
    assert [(m, s) for m, _, s in sent] == [("GET", 200)] * 3 and sent[0][1] == f"{sid}/manifest.json"
    assert _contents(reader.load_changes(sid, None, 2)) == ["a", "b"]
    assert len(counter.take()) == 2  # the manifest and the last segment


def test_a_replaced_session_is_read_afresh(reader: S3SessionStore, writer: S3SessionStore) -> None:
    sid = _create(writer, 2, title="old")
    cursor = reader.load_changes(sid, None, 10).cursor
    writer.delete(sid)
    # more messages than the cursor's position: only the session's uid tells it was replaced
    writer.create(
        SessionRecord(id=sid, title="new", messages=tuple(Message("user", f"n{i}") for i in range(3)))
    )
    again = reader.load_changes(sid, cursor, 10)
    assert not again.continues and _contents(again) == ["n0", "n1", "n2"]
    assert again.header is not None and again.header.title == "new"
    writer.delete(sid)
    with pytest.raises(SessionNotFoundError):
        reader.load_changes(sid, again.cursor, 10)


def test_more_than_max_messages_appended_returns_the_tail(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(writer, 1)
    cursor = reader.load_changes(sid, None, 10).cursor
    writer.append_messages(sid, [Message("user", f"x{i}") for i in range(3)])
    exactly = reader.load_changes(sid, cursor, 3)
    assert exactly.continues and _contents(exactly) == ["x0", "x1", "x2"]
    writer.append_messages(sid, [Message("user", f"y{i}") for i in range(2)])
    writer.append_messages(sid, [Message("user", f"z{i}") for i in range(2)])
    tail = reader.load_changes(sid, exactly.cursor, 3)
    assert not tail.continues and _contents(tail) == ["y1", "z0", "z1"] and tail.header is not None
    assert reader.load_changes(sid, tail.cursor, 0).continues  # nothing new fits in zero


def test_a_compaction_that_merged_read_messages_continues_exactly_after_the_cursor(
    reader: S3SessionStore, writer: S3SessionStore
) -> None:
    sid = _create(writer, 0)
    cursors = []
    for i in range(30):  # max_segments=4: tails merge again and again across earlier cursors
        writer.append_messages(sid, [Message("user", f"q{i}"), Message("assistant", f"a{i}")])
        cursors.append(reader.load_changes(sid, cursors[-1] if cursors else None, 100).cursor)
    assert len(writer._read_manifest(sid)[1]["segments"]) <= 4
    everything = [m.content for m in writer.load(sid).messages]
    for n, cursor in enumerate(cursors[:-1]):
        assert isinstance(cursor, ManifestCursor) and cursor.count == 2 * (n + 1)
        changes = reader.load_changes(sid, cursor, 100)
        assert changes.continues and _contents(changes) == everything[cursor.count :]


def test_a_foreign_cursor_reads_afresh(reader: S3SessionStore) -> None:
    sid = _create(reader, 2)
    changes = reader.load_changes(sid, ("not", "ours"), 1)
    assert not changes.continues and _contents(changes) == ["m1"]


def test_segments_from_finds_the_first_unread_message() -> None:
    segments = [{"key": "a", "count": 3}, {"key": "b", "count": 0}, {"key": "c", "count": 2}]
    assert segments_from(segments, 0) == (segments, 0)
    assert segments_from(segments, 2) == (segments, 2)
    assert segments_from(segments, 3) == (segments[2:], 0)
    assert segments_from(segments, 4) == (segments[2:], 1)
    assert segments_from(segments, 5) == ([], 0)


@pytest.mark.anyio
async def test_the_client_sees_another_hosts_append_through_its_warm_history(
    home: Path, server: S3Server, bucket: str, writer: S3SessionStore
) -> None:
    sid = _create(writer, 40)
    scripted = ScriptedPlugin()
    options = {"bucket": bucket, "endpoint_url": server.url, "prefix": writer.prefix}
    async with OblixClient(
        home=home, session_store="s3", store_options=options, plugins=[scripted], execution=FAST
    ) as client:
        await client.hook_model("scripted", "local", context_window=4096)
        await client.execute("first", session_id=sid, stream=False)
        writer.append_messages(sid, [Message("assistant", "from elsewhere")])
        await client.execute("second", session_id=sid, stream=False)
        sent = [(m.role, m.content) for m in scripted.calls["local"][-1].messages]
        assert sent[-3:] == [
            ("assistant", "echo: first"),
            ("assistant", "from elsewhere"),
            ("user", "second"),
        ]
        assert len(sent) == 40 + 4
