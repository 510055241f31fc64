"""The contract every :class:`~oblix_core.sessions.store.SessionStore` must satisfy."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest

from oblix_core.errors import (
    InvalidSessionIdError,
    SessionCorruptedError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.sessions.migration import find_damaged
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.sessions.store import SessionStore

BAD_IDS = ["../escape", "/etc/passwd", "a/b", "a\x00b", "", "..", ".hidden", "a" * 200, "x\\y"]


def _session(**kwargs: Any) -> SessionRecord:
    return SessionRecord(id=new_session_id(), **kwargs)


class SessionStoreContract:
    """Subclass this in your tests and provide a ``store`` fixture returning a fresh store.

    Override :meth:`damage_session` too, to run the damaged-record case.
    """

    @pytest.fixture
    def store(self) -> SessionStore:  # pragma: no cover - always overridden
        raise NotImplementedError("provide a `store` fixture")

    def damage_session(self, store: SessionStore, session_id: str) -> None:
        """Damage the stored record of ``session_id`` in this store's own way.

        Write what a bug, a foreign writer or a bad restore could leave: e.g. a title
        that is not valid JSON or not a string, a header that is not an object. Damage
        it where both ``load`` and the listing read it (for a store whose listing has
        its own index, damage the session's index entry too).
        """
        raise NotImplementedError

    def test_iter_session_ids_enumerates_every_session(self, store: SessionStore) -> None:
        records = [_session(title=f"s{i}") for i in range(3)]
        for record in records:
            store.create(record)
        assert {r.id for r in records} <= set(store.iter_session_ids())
        store.delete(records[0].id)
        assert records[0].id not in set(store.iter_session_ids())

    def test_a_damaged_session_is_isolated(self, store: SessionStore) -> None:
        good = _session(title="good", messages=(Message("user", "hi"),), metadata={"kind": "x"})
        bad = _session(title="bad", messages=(Message("user", "hi"),), metadata={"kind": "x"})
        store.create(good)
        store.create(bad)
        try:
            self.damage_session(store, bad.id)
        except NotImplementedError:
            pytest.skip(f"{type(self).__name__} does not implement damage_session()")
        for listing in (store.list(limit=50), store.list(limit=50, filter_metadata={"kind": "x"})):
            listed = {s["id"] for s in listing}
            assert good.id in listed and bad.id not in listed
        with pytest.raises(SessionCorruptedError):
            store.load(bad.id)
        assert store.load(good.id).to_dict() == good.to_dict()
        assert {good.id, bad.id} <= set(store.iter_session_ids())
        damaged = find_damaged(store)
        assert bad.id in damaged and good.id not in damaged
        assert store.delete(bad.id) is True
        assert not store.exists(bad.id) and bad.id not in find_damaged(store)
        assert store.load(good.id).to_dict() == good.to_dict()

    def test_create_and_load_round_trip(self, store: SessionStore) -> None:
        record = _session(
            title="Support — ünïcode ✓",
            messages=(Message("user", "hi"), Message("assistant", "hello", model_id="x:y", metrics={"a": 1})),
            context={"customer_id": "cust_123"},
            metadata={"category": "support", "n": 2, "nested": {"k": [1, 2]}},
        )
        store.create(record)
        loaded = store.load(record.id)
        assert loaded.to_dict() == record.to_dict()

    def test_create_twice_fails(self, store: SessionStore) -> None:
        record = _session(title="a")
        store.create(record)
        with pytest.raises(SessionExistsError):
            store.create(record)
        assert store.load(record.id).title == "a"

    def test_missing_session(self, store: SessionStore) -> None:
        missing = new_session_id()
        with pytest.raises(SessionNotFoundError):
            store.load(missing)
        with pytest.raises(SessionNotFoundError):
            store.get_metadata(missing)
        with pytest.raises(SessionNotFoundError):
            store.update_metadata(missing, {"a": 1})
        with pytest.raises(SessionNotFoundError):
            store.append_messages(missing, [Message("user", "x")])
        assert store.delete(missing) is False
        assert store.exists(missing) is False

    @pytest.mark.parametrize("bad_id", BAD_IDS)
    def test_invalid_ids_rejected(self, store: SessionStore, bad_id: str) -> None:
        with pytest.raises(InvalidSessionIdError):
            store.load(bad_id)
        with pytest.raises(InvalidSessionIdError):
            store.create(SessionRecord(id=bad_id))

    def test_append_keeps_order(self, store: SessionStore) -> None:
        record = _session()
        store.create(record)
        for i in range(5):
            store.append_messages(record.id, [Message("user", f"q{i}"), Message("assistant", f"a{i}")])
        contents = [m.content for m in store.load(record.id).messages]
        assert contents == [x for i in range(5) for x in (f"q{i}", f"a{i}")]

    def test_concurrent_appends_lose_nothing(self, store: SessionStore) -> None:
        record = _session()
        store.create(record)
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                for i in range(20):
                    store.append_messages(
                        record.id, [Message("user", f"{n}-{i}-q"), Message("assistant", f"{n}-{i}-a")]
                    )
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        contents = [m.content for m in store.load(record.id).messages]
        assert len(contents) == 160
        for q, a in zip(contents[::2], contents[1::2], strict=True):  # pairs stay contiguous
            assert q.endswith("-q") and a == q[:-1] + "a"

    def test_load_recent(self, store: SessionStore) -> None:
        record = _session(title="t", metadata={"k": 1})
        store.create(record)
        store.append_messages(record.id, [Message("user", f"m{i} " + "x" * (i % 7)) for i in range(300)])
        recent = store.load_recent(record.id, 5)
        assert [m.content.split()[0] for m in recent.messages] == [f"m{i}" for i in range(295, 300)]
        assert recent.title == "t" and recent.metadata == {"k": 1}
        assert len(store.load_recent(record.id, 1000).messages) == 300
        assert store.load_recent(record.id, 0).messages == ()

    def test_metadata_merge(self, store: SessionStore) -> None:
        record = _session(metadata={"category": "support", "priority": "high"})
        store.create(record)
        store.update_metadata(record.id, {"status": "resolved", "priority": "low"})
        assert store.get_metadata(record.id) == {
            "category": "support",
            "priority": "low",
            "status": "resolved",
        }
        assert store.load(record.id).metadata == store.get_metadata(record.id)

    def test_list_orders_filters_and_limits(self, store: SessionStore) -> None:
        ids = []
        for i in range(6):
            record = _session(title=f"s{i}", metadata={"category": "support" if i % 2 else "sales", "i": i})
            store.create(record)
            ids.append(record.id)
        store.append_messages(ids[0], [Message("user", "bump")])  # s0 is now the newest
        listed = store.list(limit=50)
        mine = [s["id"] for s in listed if s["id"] in ids]
        assert mine[0] == ids[0]
        summary = next(s for s in listed if s["id"] == ids[0])
        assert summary["message_count"] == 1 and summary["title"] == "s0"
        assert set(summary) >= {"id", "title", "created_at", "updated_at", "message_count", "metadata"}
        support = store.list(limit=50, filter_metadata={"category": "support"})
        assert {s["id"] for s in support} & set(ids) == {ids[1], ids[3], ids[5]}
        assert len(store.list(limit=2, filter_metadata={"category": "support"})) == 2
        assert store.list(limit=50, filter_metadata={"category": "support", "i": 3})[0]["id"] == ids[3]
        assert store.list(limit=50, filter_metadata={"category": "nope"}) == []
        assert store.list(limit=0) == []

    def test_a_local_only_filter_means_what_routing_means(self, store: SessionStore) -> None:
        marks: dict[str, Any] = {"yes": "yes", "true": True, "null": None, "false": False, "absent": ...}
        ids = {}
        for name, value in marks.items():
            metadata = {"group": "privacy-filter"} | ({} if value is ... else {"local_only": value})
            record = _session(title=name, metadata=metadata)
            store.create(record)
            ids[record.id] = name
        for wanted, expected in ((True, {"yes", "true", "null"}), (False, {"false", "absent"})):
            found = store.list(limit=50, filter_metadata={"group": "privacy-filter", "local_only": wanted})
            assert {ids[s["id"]] for s in found if s["id"] in ids} == expected

    def test_delete(self, store: SessionStore) -> None:
        record = _session(metadata={"tag": "to-delete"})
        store.create(record)
        assert store.delete(record.id) is True
        assert not store.exists(record.id)
        assert store.list(limit=50, filter_metadata={"tag": "to-delete"}) == []
        with pytest.raises(SessionNotFoundError):
            store.load(record.id)

    def test_load_changes_follows_appends(self, store: SessionStore) -> None:
        """A store that tells changes (``load_changes``) agrees with ``load_recent`` throughout."""
        record = _session(title="t", messages=tuple(Message("user", f"m{i}") for i in range(5)))
        store.create(record)
        first = store.load_changes(record.id, None, 3)
        if first is None:  # optional: a store that cannot tell changes says so every time
            store.append_messages(record.id, [Message("assistant", "m5")])
            assert store.load_changes(record.id, None, 3) is None
            assert [m.content for m in store.load_recent(record.id, 2).messages] == ["m4", "m5"]
            return
        assert not first.continues and first.header is not None and first.header.title == "t"
        assert [m.content for m in first.messages] == ["m2", "m3", "m4"]
        same = store.load_changes(record.id, first.cursor, 10)
        assert same is not None and same.continues and same.messages == () and same.header is None
        store.append_messages(record.id, [Message("assistant", "m5"), Message("user", "m6")])
        store.update_metadata(record.id, {"k": 1})
        later = store.load_changes(record.id, same.cursor, 10)
        assert later is not None and later.continues and [m.content for m in later.messages] == ["m5", "m6"]
        assert later.header is not None and later.header.metadata == {"k": 1}
        store.append_messages(record.id, [Message("user", f"x{i}") for i in range(5)])
        many = store.load_changes(record.id, later.cursor, 2)  # more than asked: a fresh tail
        assert many is not None and not many.continues and [m.content for m in many.messages] == ["x3", "x4"]
        store.delete(record.id)
        store.create(attrs.evolve(record, messages=(Message("user", "new"),)))
        again = store.load_changes(record.id, many.cursor, 10)  # replaced: read afresh
        assert again is not None and [m.content for m in again.messages] == ["new"] and not again.continues
        store.delete(record.id)
        with pytest.raises(SessionNotFoundError):
            store.load_changes(record.id, again.cursor, 10)
