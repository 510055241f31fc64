"""``migrate_sessions`` between real stores: a chain of hops gives back identical sessions.

To add a store to the chain, add its factory to ``FACTORIES`` and its name to ``CHAIN``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from oblix_core.cli.main import build_cli
from oblix_core.sessions.migration import ALL_SESSIONS, MigrationSummary, migrate_sessions
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.sessions.store import SessionStore
from oblix_file.store import MESSAGES, META, FileSessionStore
from oblix_redis.store import RedisSessionStore
from tests import redis_servers, s3_server
from tests.redis_servers import unique_prefix
from tests.support import commands

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
    assert second.to_dict() == {
        "copied": 0,
        "updated": 0,
        "skipped": 3,
        "conflicts": [],
        "conflict_reasons": {},
        "failed": {},
    }


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


# -- every source session is copied or reported (issue 17 item 4) ------------------------------


def test_damaged_source_sessions_are_reported_never_skipped(
    make_store: Callable[[str], SessionStore],
) -> None:
    source, target = make_store("file"), make_store(CHAIN[1])
    _seed(source)
    assert isinstance(source, FileSessionStore)
    (source.root / "many" / META).write_text("{ not json")  # unlisted, and cannot be loaded
    (source.root / "plain" / META).unlink()  # a log without its header
    (source.root / "plain" / MESSAGES).write_text('{"role": "user", "content": "orphan"}\n')
    assert [s["id"] for s in source.list(limit=ALL_SESSIONS)] == ["full-1"]
    summary = migrate_sessions(source, target)
    assert summary.copied == 1 and set(summary.failed) == {"many", "plain"}
    assert META in summary.failed["many"] and META in summary.failed["plain"]
    assert not target.exists("many") and not target.exists("plain")


def test_cli_migrate_exits_1_and_names_a_damaged_session(home: Path, tmp_path: Path) -> None:
    source = FileSessionStore(home / "sessions")
    _seed(source)
    (source.root / "many" / META).write_text('{"created_at": "not a time"}')
    source.close()
    to = ["--to", "file", "--to-option", f"root={tmp_path / 't'}", "--json"]
    result = commands.invoke("sessions", "migrate", *to)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["copied"] == 2 and list(report["failed"]) == ["many"]
    result = CliRunner().invoke(build_cli(), ["sessions", "repair"])
    assert result.exit_code == 1 and "damaged: many" in result.output and META in result.output
    result = CliRunner().invoke(build_cli(), ["sessions", "repair", "--delete", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["deleted"] == ["many"]
    result = CliRunner().invoke(build_cli(), ["sessions", "repair"])
    assert result.exit_code == 0 and "0 damaged sessions" in result.output
    assert not (home / "sessions" / "many").exists() and (home / "sessions" / "plain").exists()


# -- a migration raced by writers is finished by running it again (issue 17 item 5) -------------


def _append_during(source: SessionStore, session_id: str, count: int) -> Callable[..., None]:
    """A progress callback that appends ``count`` messages once ``session_id`` has been copied."""

    def progress(_done: int, _total: int, copied: str, _outcome: str) -> None:
        if copied == session_id:
            source.append_messages(session_id, [Message("user", f"late {i}") for i in range(count)])

    return progress


@pytest.mark.parametrize("kind", ["file", "redis", "s3"])
def test_messages_appended_during_a_migration_are_copied_by_the_next_run(
    make_store: Callable[[str], SessionStore], kind: str
) -> None:
    source, target = make_store("file"), make_store(kind)
    _seed(source)
    first = migrate_sessions(source, target, progress=_append_during(source, "many", 475))
    assert first.copied == 3 and len(target.load("many").messages) == 40
    second = migrate_sessions(source, target)
    assert second == MigrationSummary(updated=1, skipped=2)
    assert len(target.load("many").messages) == 515
    assert target.load("many").to_dict() == source.load("many").to_dict()
    assert migrate_sessions(source, target) == MigrationSummary(skipped=3)


def test_a_metadata_update_during_a_migration_is_copied_by_the_next_run(
    make_store: Callable[[str], SessionStore],
) -> None:
    source, target = make_store("file"), make_store("file")
    _seed(source)

    def progress(_done: int, _total: int, copied: str, _outcome: str) -> None:
        if copied == "full-1":  # a turn going local-only: the mark first, then the private turn
            source.update_metadata("full-1", {"local_only": True, "n": 5})
            source.append_messages("full-1", [Message("user", "private")])

    migrate_sessions(source, target, progress=progress)
    assert migrate_sessions(source, target) == MigrationSummary(updated=1, skipped=2)
    moved, origin = target.load("full-1").to_dict(), source.load("full-1").to_dict()
    assert moved.pop("updated_at") >= origin.pop("updated_at")  # the catch-up's own time
    assert moved == origin
    assert migrate_sessions(source, target) == MigrationSummary(skipped=3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.append_messages("many", [Message("user", "only in the target")]), "messages"),
        (lambda t: t.update_metadata("many", {"target-only": 1}), "metadata"),
        (lambda t: t.update_metadata("many", {"status": "reopened"}), "metadata"),
    ],
)
def test_a_real_divergence_is_a_conflict_and_left_alone(
    make_store: Callable[[str], SessionStore], change: Callable[[SessionStore], None], reason: str
) -> None:
    source, target = make_store("file"), make_store("file")
    _seed(source)
    migrate_sessions(source, target)
    source.append_messages("many", [Message("user", "in the source")])
    change(target)
    before = target.load("many").to_dict()
    summary = migrate_sessions(source, target)
    assert summary.conflicts == ("many",) and reason in summary.conflict_reasons["many"]
    assert target.load("many").to_dict() == before
