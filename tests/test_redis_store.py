"""The redis store on real servers: the contract (single server and 3-master cluster),
the sessions API end to end through ``OblixClient``, the index, its repair and its costs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from oblix_core.client import OblixClient
from oblix_core.errors import (
    ConfigError,
    OblixError,
    PluginError,
    SessionCorruptedError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.sessions.store import SessionStore
from oblix_core.testing import ScriptedPlugin, SessionStoreContract
from oblix_redis.store import RedisSessionStore
from tests import redis_servers
from tests.conftest import FAST
from tests.redis_servers import RedisClusterServers, RedisServer, unique_prefix

redis_server = redis_servers.redis_server  # session fixtures: real servers
redis_cluster = redis_servers.redis_cluster

DATA = Path(__file__).parent / "data"


def _damage_title(store: RedisSessionStore, session_id: str) -> None:
    """A title that is not valid JSON, as a foreign writer or a bad restore could leave."""
    store._client.hset(f"{store.options.prefix}{{{session_id}}}:meta", "title", '{"not json')


class TestRedisContract(SessionStoreContract):
    @pytest.fixture
    def store(self, redis_server: RedisServer) -> Iterator[RedisSessionStore]:
        store = RedisSessionStore(url=redis_server.url, prefix=unique_prefix())
        yield store
        store.close()

    def damage_session(self, store: SessionStore, session_id: str) -> None:
        assert isinstance(store, RedisSessionStore)
        _damage_title(store, session_id)


class TestRedisClusterContract(SessionStoreContract):
    @pytest.fixture
    def store(self, redis_cluster: RedisClusterServers) -> Iterator[RedisSessionStore]:
        store = RedisSessionStore(url=redis_cluster.url, prefix=unique_prefix(), cluster=True)
        yield store
        store.close()

    def damage_session(self, store: SessionStore, session_id: str) -> None:
        assert isinstance(store, RedisSessionStore)
        _damage_title(store, session_id)


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisSessionStore]:
    store = RedisSessionStore(url=redis_server.url, prefix=unique_prefix())
    yield store
    store.close()


def _new(store: RedisSessionStore, **kwargs: object) -> str:
    record = SessionRecord(id=new_session_id(), **kwargs)  # type: ignore[arg-type]
    store.create(record)
    return record.id


# -- the sessions API end to end, through OblixClient, on both deployments --------------


@pytest.fixture(params=["single", "cluster"])
async def redis_client(request: pytest.FixtureRequest, home: Path) -> AsyncIterator[OblixClient]:
    if request.param == "single":
        options = {"url": request.getfixturevalue("redis_server").url, "prefix": unique_prefix()}
    else:
        url = request.getfixturevalue("redis_cluster").url
        options = {"url": url, "prefix": unique_prefix(), "cluster": "true"}  # as from the CLI
    client = OblixClient(
        home=home, session_store="redis", store_options=options, plugins=[ScriptedPlugin()], execution=FAST
    )
    assert isinstance(client.store, RedisSessionStore)
    yield client
    await client.shutdown()


@pytest.mark.anyio
async def test_sessions_api_end_to_end(redis_client: OblixClient, tmp_path: Path) -> None:
    client = redis_client
    sid = await client.create_session(
        title="Customer Support Chat",
        initial_context={"customer_id": "cust_123"},
        metadata={"category": "support", "priority": "high"},
    )
    other = await client.create_and_use_session(title="Other", metadata={"category": "sales"})
    assert client.current_session_id == other
    assert client.load_session(sid)["context"] == {"customer_id": "cust_123"}
    assert [s["id"] for s in client.list_sessions(filter_metadata={"category": "support"})] == [sid]
    assert client.update_session_metadata(sid, {"status": "resolved", "priority": "low"})
    assert client.get_session_metadata(sid) == {
        "category": "support",
        "priority": "low",
        "status": "resolved",
    }
    assert client.list_sessions()[0]["id"] == sid
    assert client.list_sessions(filter_metadata={"priority": "high"}) == []

    await client.hook_model("scripted", "m")
    result = await client.execute("hello there", session_id=sid, stream=False)
    assert "hello there" in str(result)
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["model_id"] and client.list_sessions(limit=1)[0]["message_count"] == 2
    # the core stored the exchange under a write key of its own (an unkeyed request's: its
    # answer's message id, since a caller's request id may repeat): the same key again is a no-op
    assert isinstance(client.store, RedisSessionStore)
    client.store.append_messages(sid, [Message("user", "again")], idempotency_key=messages[1]["id"])
    assert len(client.load_session(sid)["messages"]) == 2

    target = tmp_path / "export.json"
    assert await client.export_session(sid, str(target)) is True
    exported = json.loads(target.read_text())
    assert {k: v for k, v in exported.items() if k != "format_version"} == client.load_session(sid)
    copy_id = await client.copy_session(sid, new_title="Copy")
    assert client.load_session(copy_id)["messages"] == messages
    merged = await client.merge_sessions([sid, other], title="Merged")
    assert client.load_session(merged)["metadata"]["merged_from"] == [sid, other]

    assert client.delete_session(sid) is True and client.delete_session(sid) is False
    with pytest.raises(SessionNotFoundError):
        client.load_session(sid)
    assert await client.import_session(str(target)) == sid
    assert client.load_session(sid) == {k: v for k, v in exported.items() if k != "format_version"}
    reference = await client.import_session(str(DATA / "reference_session.json"))
    assert client.load_session(reference) == json.loads((DATA / "reference_session.json").read_text())
    assert {s["id"] for s in client.list_sessions()} == {sid, other, copy_id, merged, reference}


def test_store_selected_by_name_and_bad_options_are_config_errors(redis_server: RedisServer) -> None:
    from oblix_core.plugins.registry import Registry

    registry = Registry.load()
    store = registry.make_store("redis", url=redis_server.url, prefix=unique_prefix(), ttl="60")
    assert isinstance(store, RedisSessionStore) and store.options.ttl == 60
    store.close()
    store = registry.make_store("redis", url=redis_server.url, wait_replicas="0", retry_window="2.5")
    assert isinstance(store, RedisSessionStore)
    o = store.options
    assert (o.wait_replicas, o.retry_window, o.wait_timeout) == (0, 2.5, 1000)
    store.close()
    bad: list[dict[str, object]] = [
        {"url": "http://127.0.0.1:6379"},
        {"prefix": "a{b}"},
        {"prefix": ""},
        {"cluster": "maybe"},
        {"ttl": "0"},
        {"ttl": "soon"},
        {"ttl": 1.5},
        {"timeout": -1},
        {"url": "unix:///tmp/x.sock", "cluster": True},
        {"url": "redis://127.0.0.1:6379/3", "cluster": True},
        {"retry_window": -1},
        {"retry_window": "forever"},
        {"wait_replicas": 1.5},
        {"wait_replicas": "-1"},
        {"wait_timeout": 0},
    ]
    for options in bad:
        with pytest.raises(ConfigError):
            registry.make_store("redis", **options)
    with pytest.raises(ConfigError, match=r"Unknown option.*colour.*Accepted: cluster, prefix"):
        registry.make_store("redis", colour="blue")
    with pytest.raises(PluginError):
        registry.make_store("no-such-store")


# -- keys, atomic operations and their costs -------------------------------------------


def _command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_every_key_of_a_session_shares_its_hash_tag(
    redis_server: RedisServer, store: RedisSessionStore
) -> None:
    sid = _new(store, metadata={"k": "v"})
    store.append_messages(sid, [Message("user", "x")])
    raw = redis_server.client()
    session_keys = raw.keys(f"{store.options.prefix}{{{sid}}}*")
    assert sorted(k.rsplit(":", 1)[1] for k in session_keys) == ["md", "meta", "msgs", "tok"]
    assert {key_slot(k.encode()) for k in session_keys} == {key_slot(sid.encode())}
    for key in raw.keys(f"{store.options.prefix}*"):
        assert key in session_keys or key.startswith(f"{store.options.prefix}{{#index}}:")


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts what every redis-py connection sends: one send is one round trip."""
    counter = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(
        self: redis.connection.AbstractConnection, command: object, check_health: bool = True
    ) -> None:
        counter[0] += 1
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return counter


def test_one_round_trip_per_append_and_load_and_no_keys_or_scan(
    redis_server: RedisServer, store: RedisSessionStore, round_trips: list[int]
) -> None:
    raw = redis_server.client()
    sid = _new(store, metadata={"category": "x"})
    for n in range(30):
        _new(store, metadata={"category": "y" if n % 3 else "x", "n": n})
    store.append_messages(sid, [Message("user", "warm")])  # scripts are loaded now
    store.load(sid)
    store.list(limit=5, filter_metadata={"category": "x"})  # its script too, even on a fresh server
    store.append_messages(sid, [Message("user", f"m{i}") for i in range(3000)])
    for operation in (
        lambda: store.append_messages(sid, [Message("user", "q"), Message("assistant", "a")]),
        lambda: store.load(sid),
        lambda: store.load_recent(sid, 1),
    ):
        round_trips[0] = 0
        operation()
        assert round_trips[0] == 1
    before = _command_counts(raw)
    round_trips[0] = 0
    listed = store.list(limit=5, filter_metadata={"category": "x"})
    assert round_trips[0] == 2  # the filtered index, then the 5 summaries in one pipeline
    used = _delta(before, _command_counts(raw))
    assert len(listed) == 5 and listed[0]["id"] == sid
    assert "keys" not in used and "scan" not in used
    assert used["hgetall"] <= 11  # the matching sessions read, not all 31
    assert store.list(limit=100, filter_metadata={"category": "x"})[-1]["metadata"] == {
        "category": "x",
        "n": 0,
    }


def test_filters_compare_json_values(store: RedisSessionStore) -> None:
    one = _new(store, metadata={"v": 1})
    true = _new(store, metadata={"v": True})
    floating = _new(store, metadata={"v": 1.0, "nested": {"b": [1, 2], "a": None}})
    text = _new(store, metadata={"v": "1", "long": "x" * 500})

    def ids(wanted: dict[str, object]) -> set[str]:
        return {s["id"] for s in store.list(filter_metadata=wanted)}

    assert ids({"v": 1}) == {one, floating}  # JSON numbers: 1 == 1.0
    assert ids({"v": True}) == {true}  # but 1 is not true
    assert ids({"v": "1"}) == {text}
    assert ids({"nested": {"a": None, "b": [1, 2]}}) == {floating}
    assert ids({"nested": {"a": None, "b": [2, 1]}}) == set()
    assert ids({"long": "x" * 500}) == {text}  # hashed index token
    assert ids({"v": 1, "nested": {"a": None, "b": [1, 2]}}) == {floating}
    store.update_metadata(one, {"v": 2})
    assert ids({"v": 1}) == {floating} and ids({"v": 2}) == {one}


def test_writes_repeated_with_one_idempotency_key_apply_once(store: RedisSessionStore) -> None:
    """What a caller's retry (or the store's own, after a lost reply or a failover) does."""
    record = SessionRecord(id=new_session_id(), title="t")
    store.create(record, idempotency_key="req-1")
    store.create(record, idempotency_key="req-1")  # the same create, repeated: done once
    for other in ("req-2", None):
        with pytest.raises(SessionExistsError):
            store.create(record, idempotency_key=other)
    pair = [Message("user", "once"), Message("assistant", "a")]
    for _ in range(3):
        store.append_messages(record.id, pair, idempotency_key="req-3")
    for _ in range(2):  # without a key every call is a new write
        store.append_messages(record.id, [Message("user", "twice")])
    for n in range(61):  # the key is still recognised after 63 other appends to the session
        store.append_messages(record.id, [Message("user", f"n{n}")], idempotency_key=f"other-{n}")
    store.append_messages(record.id, pair, idempotency_key="req-3")
    contents = [m.content for m in store.load(record.id).messages]
    assert contents[:4] == ["once", "a", "twice", "twice"] and len(contents) == 65
    assert store.list()[0]["message_count"] == 65


def test_wait_replicas_without_replicas_refuses_writes(redis_server: RedisServer) -> None:
    """A single server has no replica: every write is applied but not acknowledged."""
    store = RedisSessionStore(url=redis_server.url, prefix=unique_prefix(), wait_replicas=1, wait_timeout=20)
    record = SessionRecord(id=new_session_id(), title="t")
    for _ in range(2):  # the retry (same key) is refused the same way, and not applied twice
        with pytest.raises(OblixError, match="only 0 of the 1 replicas") as info:
            store.create(record, idempotency_key="c")
        assert "NOT acknowledged" in str(info.value) and "same idempotency_key is safe" in str(info.value)
    with pytest.raises(OblixError, match="load the session before retrying"):
        store.append_messages(record.id, [Message("user", "q")])
    assert [m.content for m in store.load(record.id).messages] == ["q"]
    store.close()


def test_stale_index_entries_are_dropped_and_repaired(
    redis_server: RedisServer, store: RedisSessionStore
) -> None:
    raw = redis_server.client()
    keep = _new(store, title="keep", metadata={"tag": "t"})
    gone = [_new(store, title=f"gone{i}", metadata={"tag": "t"}) for i in range(3)]
    for sid in gone:  # as if they expired, or a cluster client died between its two steps
        raw.delete(*(f"{store.options.prefix}{{{sid}}}:{s}" for s in ("meta", "md", "tok", "msgs")))
    assert [s["id"] for s in store.list(filter_metadata={"tag": "t"})] == [keep]
    index = f"{store.options.prefix}{{#index}}:"
    assert raw.zcard(index + "updated") == 1  # dropped on the way
    assert raw.smembers(index + "md:" + json.dumps(["tag", "t"], separators=(",", ":"))) == {keep}

    hidden = _new(store, title="hidden")
    raw.zrem(index + "updated", hidden)  # a session the index lost
    assert hidden not in {s["id"] for s in store.list()}
    raw.zadd(index + "updated", {new_session_id(): 1.0})  # an entry with no session
    assert store.repair_index() == {"dropped": 1, "reindexed": 0}
    assert store.repair_index(rescan=True) == {"dropped": 0, "reindexed": 2}
    assert {s["id"] for s in store.list()} == {keep, hidden}


def test_corrupted_session_is_isolated(redis_server: RedisServer, store: RedisSessionStore) -> None:
    good = _new(store, title="good")
    bad = _new(store, title="bad")
    store.append_messages(bad, [Message("user", "a"), Message("user", "b")])
    redis_server.client().lset(f"{store.options.prefix}{{{bad}}}:msgs", 1, "garbage")
    with pytest.raises(Exception, match="message 2") as info:
        store.load(bad)
    assert type(info.value).__name__ == "SessionCorruptedError"
    assert store.load(good).title == "good"
    assert {s["id"] for s in store.list()} == {good, bad}


def test_a_title_that_is_not_json_is_skipped_by_listings(store: RedisSessionStore) -> None:
    """Issue 17: one damaged session used to make every listing raise a raw JSONDecodeError."""
    good = _new(store, title="good", metadata={"k": 1})
    bad = _new(store, title="bad", metadata={"k": 1})
    _damage_title(store, bad)
    for listing in (store.list(), store.list(filter_metadata={"k": 1})):
        assert [row["id"] for row in listing] == [good]
    with pytest.raises(SessionCorruptedError, match=f"Session {bad} has a damaged header"):
        store.load(bad)
    assert set(store.iter_session_ids()) == {good, bad}  # migration still sees it
    store._client.hset(f"{store.options.prefix}{{{good}}}:meta", "count", "many")
    assert store.list() == []  # a damaged count too


@pytest.mark.parametrize("wanted", [None, {"tag": "p"}])
def test_listing_pages_past_dead_entries(
    redis_server: RedisServer, store: RedisSessionStore, wanted: dict[str, str] | None
) -> None:
    raw = redis_server.client()
    ids = [_new(store, title=f"s{i}", metadata={"tag": "p", "i": i}) for i in range(40)]
    for sid in ids[-20:]:  # the 20 newest vanish behind the store's back
        raw.delete(f"{store.options.prefix}{{{sid}}}:meta")
    listed = store.list(limit=5, filter_metadata=wanted)
    assert [s["title"] for s in listed] == [f"s{i}" for i in range(19, 14, -1)]
    assert [s["id"] for s in store.list(limit=100, filter_metadata=wanted)] == ids[:20][::-1]


def test_model_health_is_shared_through_the_same_redis(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    first = RedisSessionStore(url=redis_server.url, prefix=prefix)
    second = RedisSessionStore(url=redis_server.url, prefix=prefix)
    first.shared_health().save("local:m|http://127.0.0.1:1", {"failures": 3, "until": 12.5})
    assert second.shared_health().load() == {"local:m|http://127.0.0.1:1": {"failures": 3, "until": 12.5}}
    first.close()
    second.close()


def test_broad_and_narrow_filters_agree(store: RedisSessionStore) -> None:
    """Broad filters walk the index from the newest, narrow ones intersect: same answers."""
    ids = [_new(store, metadata={"half": i % 2 == 0, "third": i % 3, "i": i}) for i in range(120)]
    newest_first = ids[::-1]
    for wanted, pick in (
        ({"half": True}, lambda i: i % 2 == 0),
        ({"half": False, "third": 1}, lambda i: i % 2 == 1 and i % 3 == 1),
        ({"i": 77}, lambda i: i == 77),
    ):
        expected = [sid for sid in newest_first if pick(ids.index(sid))]
        for limit in (1, 5, 13, 50, 200):  # small limits walk, large ones intersect
            assert [s["id"] for s in store.list(limit, wanted)] == expected[:limit], (wanted, limit)


def test_long_histories_are_stored_in_chunks(redis_server: RedisServer, store: RedisSessionStore) -> None:
    """Old messages are compacted 100 to an element; every read still gives exact messages."""
    raw = redis_server.client()
    first = [Message("user", f"m{i}") for i in range(450)]
    sid = _new(store, messages=tuple(first))
    everything = list(first)
    for size in (1, 7, 100, 1, 250, 3, 1, 1, 421):
        batch = [
            Message("assistant", f"m{len(everything) + i}", model_id="x", metrics={"i": i})
            for i in range(size)
        ]
        store.append_messages(sid, batch)
        everything += batch
    base = f"{store.options.prefix}{{{sid}}}:"
    loose, chunks = raw.llen(base + "msgs"), raw.llen(base + "chunks")
    assert 100 <= loose < 200 and chunks * 100 + loose == len(everything) == 1235
    assert store.load(sid).messages == tuple(everything)
    for n in (0, 1, 99, loose, loose + 1, 200, 201, 777, 1234, 1235, 5000):
        assert store.load_recent(sid, n).messages == tuple(everything[len(everything) - n :] if n else ())
    assert store.list()[0]["message_count"] == 1235
    raw.lset(base + "chunks", 3, "[broken")
    with pytest.raises(Exception, match="from message 301 on") as info:
        store.load(sid)
    assert type(info.value).__name__ == "SessionCorruptedError"
    assert len(store.load_recent(sid, 50).messages) == 50  # the tail is still readable


@pytest.mark.parametrize("odd", ['q"\\]]=é\n:', "plain:"])
def test_the_lean_append_script_keeps_index_ttl_and_nonces(redis_server: RedisServer, odd: str) -> None:
    """The single-server append script has the prefix and TTL written into its text: any prefix
    (quotes, backslashes, Lua brackets, non-ASCII) works, and the append still updates the
    listing index, refreshes the TTL of every key, applies a retried write once and refuses a
    missing session."""
    prefix = unique_prefix() + odd
    store = RedisSessionStore(url=redis_server.url, prefix=prefix, ttl=500)
    raw = redis_server.client()
    try:
        older, newer = _new(store), _new(store)
        assert [s["id"] for s in store.list()] == [newer, older]
        store.append_messages(older, [Message("user", "late")], idempotency_key="k1")
        store.append_messages(older, [Message("user", "late")], idempotency_key="k1")  # a retry
        assert [s["id"] for s in store.list()] == [older, newer]  # the append moved it up
        assert [m.content for m in store.load(older).messages] == ["late"]
        assert store.list()[0]["message_count"] == 1
        meta = f"{prefix}{{{older}}}:meta"
        raw.expire(meta, 5)
        store.append_messages(older, [Message("assistant", "again")])
        assert 400 < raw.ttl(meta) <= 500 and 400 < raw.ttl(f"{prefix}{{{older}}}:msgs") <= 500
        with pytest.raises(SessionNotFoundError):
            store.append_messages(new_session_id(), [Message("user", "x")])
        assert not raw.keys(f"{prefix}{{#index}}:of:*x*")  # nothing indexed for the missing one
    finally:
        store.close()


def test_writes_reload_their_scripts_after_a_script_flush(
    redis_server: RedisServer, store: RedisSessionStore
) -> None:
    """Scripts run by EVALSHA; a server that forgot them (restart, SCRIPT FLUSH) gets them again."""
    sid = _new(store)
    store.append_messages(sid, [Message("user", "one")])
    redis_server.client().script_flush()
    store.append_messages(sid, [Message("user", "two")])
    store.update_metadata(sid, {"k": "v"})
    assert [m.content for m in store.load(sid).messages] == ["one", "two"]
    assert store.get_metadata(sid) == {"k": "v"}
