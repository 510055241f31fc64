"""``migrate_sessions`` between real stores: a chain of hops gives back identical sessions.

To add a store to the chain, add its factory to ``FACTORIES`` and its name to ``CHAIN``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oblix_core.migration import ALL_SESSIONS, MigrationSummary, migrate_sessions
from oblix_core.records import Message, SessionRecord
from oblix_core.stores import SessionStore
from oblix_file.store import MESSAGES, FileSessionStore
from oblix_redis.store import RedisSessionStore
from tests import redis_servers, s3_server
from tests.redis_servers import unique_prefix

redis_server = redis_servers.redis_server  # session fixture: a real redis-server
s3_bucket = s3_server.s3_bucket  # a fresh bucket on moto's S3 server

#: kind -> factory(request, folder) of a fresh, empty store of that kind.
FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], SessionStore]] = {
    "file": lambda request, folder: FileSessionStore(folder),
    "redis": lambda request, folder: RedisSessionStore(
        url=request.getfixturevalue("redis_server").url, prefix=unique_prefix()
    ),
    "s3": lambda request, folder: s3_server.s3_store(request.getfixturevalue("s3_bucket")),
}

#: The stores a session goes through, in order; it must come back unchanged.
CHAIN = ["file", "redis", "s3", "file"]


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], SessionStore]]:
    made: list[SessionStore] = []

    def make(kind: str) -> SessionStore:
        store = FACTORIES[kind](request, tmp_path / f"{kind}-{len(made)}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _seed(store: SessionStore) -> list[str]:
    """Sessions of every shape, with distinct update times (a deterministic listing order)."""
    records = [
        SessionRecord(id="plain", created_at="2023-07-15T14:30:22.123Z"),
        SessionRecord(
            id="full-1",
            title="Support — ünïcode ✓",
            created_at="2024-01-01T10:00:00+00:00",
            updated_at="2024-01-01T10:05:00.250Z",
            messages=(
                Message("system", "be brief", id="m1", timestamp="2024-01-01T10:00:01Z"),
                Message("user", "hi", id="m2", timestamp="2024-01-01T10:00:02.5Z"),
                Message("assistant", "hello", "m3", "2024-01-01T10:00:03Z", "local:x", {"tokens": 2}),
            ),
            context={"customer_id": "cust_123", "deep": {"a": [1, 2.5, None]}},
            metadata={"category": "support", "n": 1, "flag": True, "ratio": 0.5, "nested": {"k": ["v"]}},
        ),
        SessionRecord(id="many", title="long", created_at="2024-02-01T00:00:00.000Z"),
    ]
    for record in records:
        store.create(record)
    store.append_messages(
        "many", [Message("user", f"m{i}", timestamp=f"2024-02-02T00:00:{i:02d}Z") for i in range(40)]
    )
    store.update_metadata("many", {"status": "resolved", "n": 2})
    return [r.id for r in records]


def _run_chain(make_store: Callable[[str], SessionStore]) -> tuple[SessionStore, list[SessionStore]]:
    origin = make_store(CHAIN[0])
    ids = _seed(origin)
    stores = [origin]
    for kind in CHAIN[1:]:
        target = make_store(kind)
        summary = migrate_sessions(stores[-1], target)
        assert summary == MigrationSummary(copied=len(ids)), (kind, summary)
        stores.append(target)
    return origin, stores


def test_chain_gives_identical_sessions(make_store: Callable[[str], SessionStore]) -> None:
    origin, stores = _run_chain(make_store)
    listing = origin.list(limit=ALL_SESSIONS)
    assert [s["id"] for s in listing] == ["many", "full-1", "plain"]
    for store, kind in zip(stores[1:], CHAIN[1:], strict=True):
        assert store.list(limit=ALL_SESSIONS) == listing, kind
        assert store.list(limit=50, filter_metadata={"n": 1}) == [listing[1]], kind
        for summary in listing:
            assert store.load(summary["id"]) == origin.load(summary["id"]), (kind, summary["id"])
            assert store.load(summary["id"]).to_dict() == origin.load(summary["id"]).to_dict()


def test_second_run_copies_nothing_and_reports_progress(make_store: Callable[[str], SessionStore]) -> None:
    source, target = make_store(CHAIN[0]), make_store(CHAIN[1])
    ids = _seed(source)
    seen: list[tuple[int, int, str, str]] = []
    first = migrate_sessions(source, target, progress=lambda *event: seen.append(event))
    assert first.copied == len(ids) and [e[:2] for e in seen] == [
        (n, len(ids)) for n in range(1, len(ids) + 1)
    ]
    assert {e[2] for e in seen} == set(ids) and {e[3] for e in seen} == {"copied"}
    second = migrate_sessions(source, target)
    assert second == MigrationSummary(skipped=len(ids)) and second.total == len(ids)
    assert len(target.load("many").messages) == 40
    assert second.to_dict() == {"copied": 0, "skipped": 3, "conflicts": [], "failed": {}}


def test_conflicts_are_reported_never_overwritten(make_store: Callable[[str], SessionStore]) -> None:
    source, target = make_store(CHAIN[0]), make_store(CHAIN[1])
    _seed(source)
    target.create(SessionRecord(id="plain", title="someone else's", created_at="2023-07-15T14:30:22.123Z"))
    original = source.load("full-1")
    typed = dict(original.metadata, n=True)  # equal in Python (1 == True), not in JSON
    target.create(SessionRecord(**{**original.to_dict(), "messages": original.messages, "metadata": typed}))
    summary = migrate_sessions(source, target)
    assert summary.copied == 1 and set(summary.conflicts) == {"plain", "full-1"}
    assert target.load("plain").title == "someone else's"
    assert target.get_metadata("full-1")["n"] is True


def test_unreadable_source_sessions_are_reported(
    make_store: Callable[[str], SessionStore], tmp_path: Path
) -> None:
    source = make_store("file")
    target = make_store(CHAIN[1])
    _seed(source)
    assert isinstance(source, FileSessionStore)
    messages = source.root / "many" / MESSAGES
    messages.write_bytes(b"garbage\n" + messages.read_bytes())  # listed, but cannot be loaded
    summary = migrate_sessions(source, target)
    assert summary.copied == 2 and list(summary.failed) == ["many"] and "many" in summary.failed["many"]
    assert not target.exists("many")
