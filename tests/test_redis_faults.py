"""The redis store under stress and faults, on real servers: writer processes, a server
killed and restarted mid-run, TTL expiry, and a password that must never show."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix_core.errors import OblixError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_redis.store import RedisSessionStore
from tests import redis_servers
from tests.redis_servers import RedisClusterServers, RedisServer, unique_prefix
from tests.support.waiting import wait_until

redis_server = redis_servers.redis_server  # session fixtures: real servers
redis_cluster = redis_servers.redis_cluster

PASSWORD = "pw-Zx81-never-shown"

WRITER = textwrap.dedent(
    """
    import sys
    from oblix_redis.store import RedisSessionStore
    from oblix_core.sessions.records import Message
    url, prefix, cluster, sid, tag, count = sys.argv[1:7]
    store = RedisSessionStore(url=url, prefix=prefix, cluster=cluster)
    store.exists(sid)  # connected
    print("ready", flush=True)
    sys.stdin.readline()  # every writer starts at once
    for i in range(int(count)):
        store.append_messages(sid, [Message("user", f"{tag}-{i}")])
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("deployment", ["single", "cluster"])
def test_four_processes_append_200_each(request: pytest.FixtureRequest, deployment: str) -> None:
    servers = request.getfixturevalue("redis_server" if deployment == "single" else "redis_cluster")
    cluster = "true" if deployment == "cluster" else "false"
    store = RedisSessionStore(url=servers.url, prefix=unique_prefix(), cluster=cluster)
    sid = new_session_id()
    store.create(SessionRecord(id=sid))
    argv = [servers.url, store.options.prefix, cluster, sid]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, *argv, f"p{n}", "200"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for w in writers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in writers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    for w in writers:
        assert w.wait(120) == 0
    contents = [m.content for m in store.load(sid).messages]
    assert len(contents) == 800
    for n in range(4):
        assert [c for c in contents if c.startswith(f"p{n}-")] == [f"p{n}-{i}" for i in range(200)]
    assert store.list()[0]["message_count"] == 800
    store.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, which it may kill (``--appendonly yes``, fsync always)."""
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    yield server
    server.stop()


def test_server_killed_and_restarted_mid_run(own_server: RedisServer) -> None:
    """Writes ride through a restart (retry_window); past the window, a clear error."""
    store = RedisSessionStore(url=own_server.url, prefix=unique_prefix(), timeout=1)
    impatient = RedisSessionStore(url=own_server.url, prefix=store.options.prefix, retry_window=0.3)
    sid = new_session_id()
    store.create(SessionRecord(id=sid, title="survives"))
    acked: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                store.append_messages(sid, [Message("user", f"m{n}")])
                acked.append(f"m{n}")
            except BaseException as exc:
                failures.append(exc)
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wait_until(lambda: len(acked) >= 50, 30)
        own_server.kill()
        for operation in (lambda: impatient.load(sid), impatient.list, lambda: impatient.exists(sid)):
            with pytest.raises(OblixError, match="unreachable") as info:
                operation()
            text = str(info.value)
            assert "127.0.0.1" in text and PASSWORD not in text and "retried for 0.3 s" in text
            assert "start the server" in text.lower() and "can simply be retried" in text
        with pytest.raises(OblixError, match="load the session before retrying"):
            impatient.append_messages(sid, [Message("user", "unsure")])  # no key: no promise
        during = len(acked)
        own_server.start()  # same port, same data folder
        assert wait_until(lambda: len(acked) >= during + 50, 30)
    finally:
        stop.set()
        thread.join(30)
    assert failures == []  # the writer rode through the restart
    contents = [m.content for m in store.load(sid).messages]  # the same store object, reconnected
    assert set(acked) <= set(contents)  # every acknowledged append survived kill -9
    assert len(contents) == len(set(contents))  # retried appends were not applied twice
    summary = store.list()[0]
    assert (summary["id"], summary["title"], summary["message_count"]) == (sid, "survives", len(contents))
    store.close()
    impatient.close()


def test_ttl_expiry_on_a_real_server(redis_server: RedisServer) -> None:
    raw = redis_server.client()
    store = RedisSessionStore(url=redis_server.url, prefix=unique_prefix(), ttl=1)
    sid = new_session_id()
    store.create(SessionRecord(id=sid, metadata={"tag": "brief"}))
    store.append_messages(sid, [Message("user", "soon gone")])
    keys = raw.keys(f"{store.options.prefix}{{{sid}}}:*")
    assert len(keys) == 4 and all(0 < raw.pttl(k) <= 1000 for k in keys)  # every key, server clock
    assert [s["id"] for s in store.list(filter_metadata={"tag": "brief"})] == [sid]
    time.sleep(2.1)
    with pytest.raises(SessionNotFoundError):
        store.load(sid)
    assert store.list(filter_metadata={"tag": "brief"}) == [] and store.list() == []
    left = raw.keys(f"{store.options.prefix}*")
    assert left == [f"{store.options.prefix}{{#index}}:seq"]  # index entries dropped; the counter stays

    refreshed = RedisSessionStore(url=redis_server.url, prefix=unique_prefix(), ttl=2)
    kept = new_session_id()
    refreshed.create(SessionRecord(id=kept))
    for _ in range(3):  # 3.6 s in all, but every write restarts the 2 s
        time.sleep(1.2)
        refreshed.append_messages(kept, [Message("user", "still here")])
    assert len(refreshed.load(kept).messages) == 3
    store.close()
    refreshed.close()


def test_password_never_shown(own_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = RedisSessionStore(url=own_server.url, prefix=unique_prefix(), retry_window=0.5)
    sid = new_session_id()
    store.create(SessionRecord(id=sid))  # the password works
    shown = [repr(store), str(store.describe()), repr(store.options)]
    assert all("***" in text for text in shown[:2])
    wrong = RedisSessionStore(url=own_server.url.replace(PASSWORD, PASSWORD[::-1]), prefix="x:")
    with pytest.raises(OblixError, match="rejected the credentials") as info:
        wrong.exists(sid)
    shown += [str(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
    own_server.kill()
    with pytest.raises(OblixError) as info:
        store.load(sid)
    shown.append(str(info.value))
    shown += [record.getMessage() for record in caplog.records]
    for text in shown:
        assert PASSWORD not in text and PASSWORD[::-1] not in text
    store.close()
    wrong.close()


def test_cluster_keys_spread_over_the_masters(redis_cluster: RedisClusterServers) -> None:
    store = RedisSessionStore(url=redis_cluster.url, prefix=unique_prefix(), cluster=True)
    ids = [new_session_id() for _ in range(30)]
    for sid in ids:
        store.create(SessionRecord(id=sid, metadata={"all": True}))
    counts = []
    for node in redis_cluster.nodes:
        client = node.client()
        counts.append(len(client.keys(f"{store.options.prefix}{{*}}:meta")))
        client.close()
    assert sum(counts) == 30 and all(counts)  # the sessions live on all three masters
    assert {s["id"] for s in store.list(limit=100, filter_metadata={"all": True})} == set(ids)
    store.close()
