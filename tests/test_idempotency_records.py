"""Idempotency records on every store: claim once, compare-and-set on the owner, release,
expiry — against a real redis-server, a real Redis Cluster and moto's S3 server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix_core.sessions.idempotency import FileIdempotencyRecords, IdempotencyRecords, KeyedRecord
from oblix_redis.idempotency import RedisIdempotencyRecords
from oblix_redis.store import RedisSessionStore
from oblix_s3.store import S3SessionStore
from tests import redis_servers
from tests.redis_servers import RedisClusterServers, RedisServer, unique_prefix
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures

redis_server = redis_servers.redis_server
redis_cluster = redis_servers.redis_cluster


def running(owner: str, ttl: float = 60.0, lease: float = 30.0) -> KeyedRecord:
    now = time.time()
    return KeyedRecord("running", {"prompt": "p1"}, owner, now + lease, now + ttl)


def done(owner: str, result: dict[str, object], ttl: float = 60.0) -> KeyedRecord:
    now = time.time()
    return KeyedRecord("done", {"prompt": "p1"}, owner, now, now + ttl, result)


@pytest.fixture(params=["file", "redis", "redis-cluster", "s3"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdempotencyRecords]:
    if request.param == "file":
        yield FileIdempotencyRecords(tmp_path / "idem")
        return
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisSessionStore(url=server.url, prefix=unique_prefix())
    elif request.param == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        store = RedisSessionStore(url=cluster.url, prefix=unique_prefix(), cluster=True)
    else:
        s3: S3Server = request.getfixturevalue("server")
        store = S3SessionStore(bucket=new_bucket(s3.url), endpoint_url=s3.url)
    found = store.idempotency_records()
    assert found is not None
    yield found
    store.close()


def test_a_key_is_claimed_once(records: IdempotencyRecords) -> None:
    assert records.claim("k1", running("a")) is None
    found = records.claim("k1", running("b"))
    assert found is not None and found.owner == "a" and found.state == "running"
    assert records.claim("k2", running("b")) is None  # another key is another request


def test_only_the_owner_completes_and_the_result_is_kept(records: IdempotencyRecords) -> None:
    records.claim("k", running("a"))
    assert records.replace("k", done("b", {"response": "stolen"}), owner="b") is False
    assert records.replace("k", done("a", {"response": "hi"}), owner="a") is True
    found = records.get("k")
    assert found is not None and found.state == "done" and found.result == {"response": "hi"}
    assert records.claim("k", running("c")) == found  # a repeat finds the result


def test_a_release_lets_the_next_request_run(records: IdempotencyRecords) -> None:
    records.claim("k", running("a"))
    records.release("k", owner="someone else")  # not theirs: nothing happens
    assert records.get("k") is not None
    records.release("k", owner="a")
    assert records.get("k") is None
    assert records.claim("k", running("b")) is None


def test_an_expired_record_is_forgotten(records: IdempotencyRecords) -> None:
    records.claim("k", running("a", ttl=1.0))
    deadline = time.time() + 10
    while records.get("k") is not None and time.time() < deadline:
        time.sleep(0.2)
    assert records.get("k") is None
    assert records.claim("k", running("b")) is None


def test_keys_are_caller_text_never_paths(records: IdempotencyRecords, tmp_path: Path) -> None:
    for key in ("../../etc/passwd", "a/b\\c", "{slot}", "ключ ✓", "x" * 255):
        assert records.claim(key, running("a")) is None
        assert records.get(key) is not None
    assert not (tmp_path / "etc").exists()


def test_concurrent_claims_have_one_winner(records: IdempotencyRecords) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(owner: str) -> None:
        barrier.wait()
        if records.claim("race", running(owner)) is None:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_a_stale_claim_is_taken_over_by_compare_and_set(records: IdempotencyRecords) -> None:
    records.claim("k", running("dead", lease=-1.0))
    found = records.claim("k", running("b"))
    assert found is not None and found.lease_until < time.time()
    assert records.replace("k", running("b"), owner=found.owner) is True
    assert records.replace("k", running("c"), owner=found.owner) is False  # one taker wins


def test_redis_records_are_in_one_slot_each(redis_server: RedisServer) -> None:
    records = RedisIdempotencyRecords(redis_server.client(), "p:")
    assert records._key("k").startswith("p:{#idem:")
