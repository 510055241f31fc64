"""The S3 session store on moto's S3 server: contract, layout and costs, errors, API end to end."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from oblix import OblixClient
from oblix_core.errors import ConfigError, OblixError, SessionCorruptedError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.sessions.store import SessionStore
from oblix_core.testing import ScriptedPlugin, SessionStoreContract
from oblix_s3.layout import INDEX_SHARDS, plan_compaction
from oblix_s3.store import S3SessionStore
from tests.conftest import FAST
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures `aws_env`, `server`
from tests.support.net import free_port


@pytest.fixture
def bucket(server: S3Server) -> str:
    return new_bucket(server.url)


@pytest.fixture
def store(server: S3Server, bucket: str) -> Iterator[S3SessionStore]:
    s3 = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=8)
    yield s3
    s3.close()


class TestS3StoreContract(SessionStoreContract):
    @pytest.fixture
    def store(self, server: S3Server, bucket: str) -> Iterator[S3SessionStore]:
        s3 = S3SessionStore(bucket=bucket, endpoint_url=server.url)
        yield s3
        s3.close()

    def damage_session(self, store: SessionStore, session_id: str) -> None:
        """A foreign writer's manifest (title not a string), and its listing entry likewise."""
        assert isinstance(store, S3SessionStore)
        key = store.keys.manifest(session_id)
        manifest = json.loads(store.objects.get(key)[0])  # type: ignore[index]
        store.objects.put(key, json.dumps({**manifest, "title": {"not": "a string"}}).encode())
        shard = store.keys.shard(store.keys.shard_of(session_id))
        entries = json.loads(store.objects.get(shard)[0])  # type: ignore[index]
        entries["sessions"][session_id]["title"] = {"not": "a string"}
        store.objects.put(shard, json.dumps(entries).encode())


class Requests:
    """Every HTTP request a store sends (a botocore ``before-send`` hook), as ``METHOD key``."""

    def __init__(self, store: S3SessionStore) -> None:
        self.sent: list[str] = []
        self.bucket = store.bucket
        store.objects.client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, **_: Any) -> None:
        path = request.url.split("?")[0].split(f"/{self.bucket}/", 1)[-1]
        self.sent.append(f"{request.method} {path}")

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def _objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=server.url)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _new(store: S3SessionStore, **kwargs: Any) -> str:
    record = SessionRecord(id=new_session_id(), **kwargs)
    store.create(record)
    return record.id


# -- layout and costs -------------------------------------------------------------------------


def test_append_writes_one_new_segment_and_never_rewrites_history(
    server: S3Server, bucket: str, store: S3SessionStore
) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "first")])
    before = _objects(server, bucket, f"oblix/sessions/{sid}/seg-")
    store.append_messages(sid, [Message("user", "second"), Message("assistant", "third")])
    after = _objects(server, bucket, f"oblix/sessions/{sid}/seg-")
    assert {k: after[k] for k in before} == before  # old segments untouched
    (new_key,) = set(after) - set(before)
    assert [json.loads(line)["content"] for line in after[new_key].splitlines()] == ["second", "third"]
    manifest = json.loads(_objects(server, bucket, f"oblix/sessions/{sid}/manifest.json").popitem()[1])
    assert [s["count"] for s in manifest["segments"]] == [1, 2]


def test_requests_per_append_do_not_grow_with_history(store: S3SessionStore) -> None:
    sid = _new(store)
    counter = Requests(store)
    store.append_messages(sid, [Message("user", "warm")])
    counter.take()
    store.append_messages(sid, [Message("user", "x")])
    small = counter.take()
    # segment PUT, then manifest and index shard PUTs with If-Match on the cached ETags
    assert [r.split()[0] for r in small] == ["PUT", "PUT", "PUT"]
    assert small[1].endswith("manifest.json") and "/index/" in "/" + small[2]
    for i in range(300):
        store.append_messages(sid, [Message("user", f"m{i}")])
    counter.take()
    costs = []
    for i in range(40):  # includes compactions, which add GETs of recent segments only
        store.append_messages(sid, [Message("user", f"late{i}")])
        costs.append(len(counter.take()))
    assert sorted(costs)[len(costs) // 2] == 3
    assert max(costs) <= 3 + 2 + store.max_segments + 1


def test_load_is_bounded_and_load_recent_reads_only_the_tail(store: S3SessionStore) -> None:
    sid = _new(store, title="long")
    for i in range(400):
        store.append_messages(sid, [Message("user", f"q{i}"), Message("assistant", f"a{i}")])
    manifest = store._read_manifest(sid)[1]
    assert len(manifest["segments"]) <= store.max_segments
    counter = Requests(store)
    loaded = store.load(sid)
    assert [m.content for m in loaded.messages] == [x for i in range(400) for x in (f"q{i}", f"a{i}")]
    sent = counter.take()
    assert len(sent) == 1 + len(manifest["segments"]) <= 1 + store.max_segments
    recent = store.load_recent(sid, 3)
    assert [m.content for m in recent.messages] == ["a398", "q399", "a399"]
    sent = counter.take()
    assert len(sent) <= 3  # the manifest plus the last one or two (small) segments
    assert recent.title == "long"


def test_compaction_leaves_no_unreferenced_segments(
    server: S3Server, bucket: str, store: S3SessionStore
) -> None:
    sid = _new(store)
    for i in range(150):
        store.append_messages(sid, [Message("user", str(i))])
    manifest = store._read_manifest(sid)[1]
    stored = _objects(server, bucket, f"oblix/sessions/{sid}/")
    listed = {f"oblix/sessions/{sid}/{s['key']}" for s in manifest["segments"]}
    assert set(stored) == listed | {f"oblix/sessions/{sid}/manifest.json"}
    assert sum(s["count"] for s in manifest["segments"]) == 150
    assert [m.content for m in store.load(sid).messages] == [str(i) for i in range(150)]


def test_compaction_plan_keeps_segments_few_and_geometric() -> None:
    assert plan_compaction([1] * 8, 8) is None
    assert plan_compaction([1] * 9, 8) == 0
    assert plan_compaction([64, 1, 1, 1, 1, 1, 1, 1, 1], 8) == 1  # the big head is not rewritten
    counts: list[int] = []
    rewritten = 0
    for _ in range(20_000):
        counts.append(1)
        start = plan_compaction(counts, 16)
        if start is not None:
            rewritten += sum(counts[start:])
            counts[start:] = [sum(counts[start:])]
        assert len(counts) <= 17
    assert rewritten < 20_000 * 16  # O(log n) rewrites per message, not O(n)


def test_listing_reads_only_the_index(store: S3SessionStore) -> None:
    ids = [_new(store, title=f"s{i}", metadata={"i": i, "even": i % 2 == 0}) for i in range(12)]
    for sid in ids:
        store.append_messages(sid, [Message("user", "hi")])
    counter = Requests(store)
    listed = store.list(limit=50, filter_metadata={"even": True})
    assert {s["id"] for s in listed} == set(ids[::2])
    sent = counter.take()
    assert sent and all(re.fullmatch(r"GET oblix/index/\d\d\.json", r) for r in sent)
    assert len(sent) <= INDEX_SHARDS


def test_filter_compares_json_types(store: S3SessionStore) -> None:
    one = _new(store, metadata={"flag": 1, "nested": {"a": [1, 2]}})
    true = _new(store, metadata={"flag": True})
    assert [s["id"] for s in store.list(filter_metadata={"flag": 1})] == [one]
    assert [s["id"] for s in store.list(filter_metadata={"flag": True})] == [true]
    assert [s["id"] for s in store.list(filter_metadata={"flag": 1.0})] == [one]
    assert [s["id"] for s in store.list(filter_metadata={"nested": {"a": [1, 2]}})] == [one]
    assert store.list(filter_metadata={"nested": {"a": [True, 2]}}) == []
    assert store.list(filter_metadata={"flag": "1"}) == []


def test_rebuild_index_restores_the_listing(server: S3Server, bucket: str, store: S3SessionStore) -> None:
    for i in range(5):
        sid = _new(store, title=f"s{i}", metadata={"i": i})
        store.append_messages(sid, [Message("user", "x")] * (i + 1))
    before = store.list()
    client = boto3.client("s3", endpoint_url=server.url)
    for key in _objects(server, bucket, "oblix/index/"):
        client.delete_object(Bucket=bucket, Key=key)
    fresh = S3SessionStore(bucket=bucket, endpoint_url=server.url)
    assert fresh.list() == []
    assert fresh.rebuild_index() == 5
    assert fresh.list() == before
    assert store.list() == before  # the first store revalidates its cached shards
    fresh.close()


def test_orphan_segment_of_an_uncommitted_append_is_invisible_and_deleted(
    server: S3Server, bucket: str, store: S3SessionStore
) -> None:
    sid = _new(store)
    store.append_messages(sid, [Message("user", "kept")])
    store._put_segment(sid, "seg-orphan.jsonl", b'{"role":"user","content":"lost"}\n')  # writer died here
    assert [m.content for m in store.load(sid).messages] == ["kept"]
    assert store.delete(sid) is True
    assert _objects(server, bucket, f"oblix/sessions/{sid}/") == {}


def test_corrupted_objects_are_isolated(server: S3Server, bucket: str, store: S3SessionStore) -> None:
    good = _new(store, title="good")
    bad = _new(store, title="bad")
    store.append_messages(bad, [Message("user", "x")])
    client = boto3.client("s3", endpoint_url=server.url)
    segment = next(k for k in _objects(server, bucket, f"oblix/sessions/{bad}/seg-"))
    client.put_object(Bucket=bucket, Key=segment, Body=b"garbage\n")
    with pytest.raises(SessionCorruptedError, match=bad):
        store.load(bad)
    client.put_object(Bucket=bucket, Key=f"oblix/sessions/{bad}/manifest.json", Body=b"{")
    with pytest.raises(SessionCorruptedError, match=bad):
        store.get_metadata(bad)
    assert store.load(good).title == "good"
    assert {s["id"] for s in store.list()} == {good, bad}


def test_damaged_index_entries_are_skipped(server: S3Server, bucket: str, store: S3SessionStore) -> None:
    good = _new(store, title="good")
    client = boto3.client("s3", endpoint_url=server.url)
    key = store.keys.shard(store.keys.shard_of(good))
    shard = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    shard["sessions"]["junk"] = {"title": 1}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(shard).encode())
    assert [s["id"] for s in store.list()] == [good]


def test_prefixes_separate_stores_in_one_bucket(server: S3Server, bucket: str) -> None:
    a = S3SessionStore(bucket=bucket, endpoint_url=server.url, prefix="team-a")
    b = S3SessionStore(bucket=bucket, endpoint_url=server.url, prefix="team-b/")
    sid = _new(a, title="a")
    assert [s["id"] for s in a.list()] == [sid] and b.list() == []
    with pytest.raises(SessionNotFoundError):
        b.load(sid)
    assert set(_objects(server, bucket)) >= {f"team-a/sessions/{sid}/manifest.json"}


# -- options and errors -----------------------------------------------------------------------


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="bucket"):
        S3SessionStore()
    with pytest.raises(ConfigError, match="max_segments"):
        S3SessionStore(bucket="b-b-b", max_segments="many")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prefix"):
        S3SessionStore(bucket="b-b-b", prefix="../x")
    assert S3SessionStore(bucket="b-b-b", max_segments="4").max_segments == 4  # type: ignore[arg-type]


def test_missing_bucket_is_a_clear_error(server: S3Server) -> None:
    s3 = S3SessionStore(bucket="no-such-bucket-here", endpoint_url=server.url)
    for call in (lambda: s3.list(), lambda: s3.load("abc"), lambda: s3.create(SessionRecord(id="abc"))):
        with pytest.raises(
            OblixError, match=re.escape("'no-such-bucket-here' does not exist at http://127.0.0.1")
        ):
            call()


def test_unreachable_endpoint_is_a_clear_error() -> None:
    s3 = S3SessionStore(
        bucket="b-b-b", endpoint_url=f"http://user:pw@127.0.0.1:{free_port()}", max_attempts=2, timeout=2
    )
    with pytest.raises(OblixError, match=re.escape("Cannot reach S3 at http://127.0.0.1")) as caught:
        s3.load("abc")
    assert "pw" not in str(caught.value) and "pw" not in json.dumps(s3.describe()) + repr(s3)


# -- through OblixClient --------------------------------------------------------------------------


@pytest.fixture
async def client(home: Path, server: S3Server, bucket: str) -> AsyncIterator[OblixClient]:
    oblix = OblixClient(
        home=home,
        session_store="s3",
        store_options={"bucket": bucket, "endpoint_url": server.url, "prefix": "api/"},
        plugins=[ScriptedPlugin()],
        execution=FAST,
    )
    yield oblix
    await oblix.shutdown()


@pytest.mark.anyio
async def test_sessions_api_end_to_end(client: OblixClient, tmp_path: Path) -> None:
    assert isinstance(client.store, S3SessionStore) and client.store.prefix == "api/"
    sid = await client.create_session(
        title="Customer Support Chat",
        initial_context={"customer_id": "cust_123"},
        metadata={"category": "support", "priority": "high"},
    )
    other = await client.create_and_use_session(title="Other", metadata={"category": "sales"})
    assert client.current_session_id == other and client.use_session(sid) is True
    await client.hook_model("scripted", "m")
    result = await client.execute("hello there", session_id=sid, stream=False)
    data = client.load_session(sid)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["content"] == result["response"] and data["context"] == {
        "customer_id": "cust_123"
    }
    listed = client.list_sessions(filter_metadata={"category": "support", "priority": "high"})
    assert [s["id"] for s in listed] == [sid] and listed[0]["message_count"] == 2
    assert client.update_session_metadata(sid, {"status": "resolved"}) is True
    assert client.get_session_metadata(sid) == {
        "category": "support",
        "priority": "high",
        "status": "resolved",
    }
    assert client.list_sessions(limit=1)[0]["id"] == sid
    target = tmp_path / "export.json"
    assert await client.export_session(sid, str(target)) is True
    copy_id = await client.copy_session(sid, new_title="Copy")
    assert client.load_session(copy_id)["messages"] == data["messages"]
    merged = await client.merge_sessions([sid, other], title="Merged")
    assert len(client.load_session(merged)["messages"]) == 2
    assert client.delete_session(sid) is True and client.delete_session(sid) is False
    with pytest.raises(SessionNotFoundError):
        client.load_session(sid)
    assert await client.import_session(str(target)) == sid
    assert client.load_session(sid)["messages"] == data["messages"]
    assert {s["id"] for s in client.list_sessions()} == {sid, other, copy_id, merged}


@pytest.mark.anyio
async def test_store_selected_from_config_toml(home: Path, server: S3Server, bucket: str) -> None:
    (home / "config.toml").write_text(
        f'[sessions]\nstore = "s3"\n[sessions.options]\nbucket = "{bucket}"\nendpoint_url = "{server.url}"\n'
    )
    oblix = OblixClient(home=home, plugins=[ScriptedPlugin()])
    try:
        assert isinstance(oblix.store, S3SessionStore) and oblix.store.bucket == bucket
        sid = await oblix.create_session(title="from config")
        assert oblix.list_sessions()[0]["id"] == sid
    finally:
        await oblix.shutdown()


def test_cli_selects_the_s3_store(
    home: Path, server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from oblix_core.cli.main import build_cli

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cli-secret-never-shown-42")
    monkeypatch.setenv("COLUMNS", "250")
    chosen = [
        "--store",
        "s3",
        "--store-option",
        f"bucket={bucket}",
        "--store-option",
        f"endpoint_url={server.url}",
    ]

    def run(*args: str) -> str:
        result = CliRunner().invoke(build_cli(), [*chosen, *args])
        assert result.exit_code == 0, result.output
        assert "cli-secret-never-shown-42" not in result.output
        return result.output

    sid = run("sessions", "import", str(Path(__file__).parent / "data" / "reference_session.json")).strip()
    listed = json.loads(run("sessions", "list", "--json", "--filter", "category=technical_support"))
    assert [s["id"] for s in listed] == [sid] and listed[0]["message_count"] == 3
    stores = [s for p in json.loads(run("plugins", "--json")) for s in p.get("stores", [])]
    (s3,) = [s for s in stores if s["store"] == "s3"]
    assert s3["in_use"] and bucket in json.dumps(s3["where"])
    assert (
        boto3.client("s3", endpoint_url=server.url).list_objects_v2(Bucket=bucket, Prefix="oblix/sessions/")[
            "KeyCount"
        ]
        >= 2
    )


# -- listings converge; damaged entries skipped (issue 17 items 3 and 6) -------------------------


def _shard_entry(store: S3SessionStore, session_id: str) -> Any:
    found = store.objects.get(store.keys.shard(store.keys.shard_of(session_id)))
    return json.loads(found[0])["sessions"].get(session_id) if found else None


def test_a_create_whose_index_update_fails_is_still_listed(
    store: S3SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise OblixError("index write failed")

    with monkeypatch.context() as patched:
        patched.setattr(store.index, "upsert", broken)
        sid = _new(store, title="acknowledged")  # acknowledged: the manifest is committed
    assert _shard_entry(store, sid)["pending"]
    assert [s["id"] for s in store.list()] == [sid]  # repaired on read
    assert "pending" not in _shard_entry(store, sid)
    assert store.list()[0]["title"] == "acknowledged"


def test_a_create_whose_listing_entry_cannot_be_written_stores_nothing(
    server: S3Server, bucket: str, store: S3SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise OblixError("index write failed")

    monkeypatch.setattr(store.index, "intend", broken)
    record = SessionRecord(id=new_session_id(), messages=(Message("user", "x"),))
    with pytest.raises(OblixError, match="Nothing was stored"):
        store.create(record)
    assert _objects(server, bucket, "oblix/sessions/") == {}


def test_an_uncommitted_create_is_unlisted_then_dropped(
    store: S3SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    put = store.objects.put

    def no_manifest(key: str, body: bytes, **kwargs: Any) -> str:
        if key.endswith("/manifest.json"):
            raise OblixError("connection lost")
        return put(key, body, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(store.objects, "put", no_manifest)
        with pytest.raises(OblixError):
            store.create(SessionRecord(id="never-committed"))
    assert _shard_entry(store, "never-committed")["pending"]
    assert store.list() == [] and _shard_entry(store, "never-committed")  # young: kept, in case
    monkeypatch.setattr("oblix_s3.store.PENDING_GRACE", 0.0)
    assert store.list() == [] and _shard_entry(store, "never-committed") is None


@pytest.mark.parametrize(
    "damage",
    [
        {"title": 1},
        {"title": ["x"]},
        {"created_at": None},
        {"updated_at": 5},
        {"message_count": "3"},
        {"message_count": True},
        {"metadata": []},
        {"ts": "soon"},
        {"ts": False},
    ],
)
def test_index_entries_of_the_wrong_shape_are_skipped(store: S3SessionStore, damage: dict[str, Any]) -> None:
    good, bad = _new(store, title="good"), _new(store, title="bad")
    key = store.keys.shard(store.keys.shard_of(bad))
    shard = json.loads(store.objects.get(key)[0])  # type: ignore[index]
    shard["sessions"][bad].update(damage)
    store.objects.put(key, json.dumps(shard).encode())
    assert [s["id"] for s in store.list()] == [good]


@pytest.mark.parametrize(
    "damage",
    [
        {"title": 7},
        {"created_at": "yesterday"},
        {"updated_at": []},
        {"metadata": "x"},
        {"context": 3},
        {"uid": None},
        {"id": "someone-else"},
        {"segments": [{"key": "seg-x.jsonl", "count": -1}]},
        {"segments": ["seg-x.jsonl"]},
    ],
)
def test_manifests_of_the_wrong_shape_are_reported_as_damaged(
    store: S3SessionStore, damage: dict[str, Any]
) -> None:
    sid = _new(store, title="t")
    key = store.keys.manifest(sid)
    manifest = json.loads(store.objects.get(key)[0])  # type: ignore[index]
    store.objects.put(key, json.dumps({**manifest, **damage}).encode())
    with pytest.raises(SessionCorruptedError, match=sid):
        store.load(sid)
    assert sid in set(store.iter_session_ids())
