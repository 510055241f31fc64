"""Idempotency keys under hostile or unlucky clients and crashes (issue 31, red-team): an
interrupted answer, a reader that stops reading, a cancelled wait for the claim, the same key
with another workspace, damaged or contested records.

The model is the scripted backend (a test double that counts its calls); the stores are the
real file store, a real redis-server and moto's S3 server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import filelock
import pytest

from oblix_core.client import OblixClient
from oblix_core.errors import (
    ExchangeNotStoredError,
    IdempotencyClaimLostError,
    IdempotencyKeyMismatchError,
    OblixError,
    SessionCorruptedError,
    SessionError,
    SessionNotFoundError,
    StreamInterruptedError,
)
from oblix_core.request import idempotency
from oblix_core.sessions.idempotency import FileIdempotencyRecords, KeyedRecord, key_digest
from oblix_core.testing import ScriptedPlugin
from oblix_core.testing.scripted import Step
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.usage.writer import write_behind
from oblix_redis.idempotency import RedisIdempotencyRecords
from oblix_redis.store import RedisSessionStore
from oblix_s3.store import S3SessionStore
from tests import redis_servers
from tests.conftest import FAST
from tests.openai_loopback import LoopbackOpenAI
from tests.redis_servers import RedisServer, unique_prefix
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures
from tests.test_idempotency import store_options

pytestmark = pytest.mark.anyio
redis_server = redis_servers.redis_server

QUICK = attrs.evolve(FAST, idempotency_wait=0.3)


@pytest.fixture(params=["file", "redis"])
async def keyed_client(
    request: pytest.FixtureRequest,
    home: Path,
    scripted: ScriptedPlugin,
    make_client: Callable[..., OblixClient],
) -> OblixClient:
    client = make_client(
        home=home, plugins=[scripted], execution=QUICK, **store_options(request, request.param)
    )
    await client.hook_model("scripted", "a", local=True)
    return client


def turns(client: OblixClient, session_id: str) -> list[tuple[str, str, bool]]:
    """``(role, content, interrupted)`` of each stored message."""
    messages = client.load_session(session_id)["messages"]
    return [(m["role"], m["content"], bool((m.get("metrics") or {}).get("interrupted"))) for m in messages]


async def test_a_retry_after_an_interrupted_answer_runs_again_and_is_stored(
    keyed_client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """The partial is stored marked interrupted; the key is released, so the retry generates the
    answer (it neither waits for a claim nobody holds nor replays the partial as the answer) and
    stores it — also on a store that applies a write once per request id (Redis)."""
    sid = await keyed_client.create_session(title="t")
    scripted.scripts["a"] = [Step(("half ",), fail="transient")]
    with pytest.raises(StreamInterruptedError):
        await keyed_client.execute("hi", session_id=sid, idempotency_key="k-int")
    result = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-int")
    assert result["response"] == "echo: hi" and "replayed" not in result["metrics"]
    assert len(scripted.calls["a"]) == 2
    assert turns(keyed_client, sid) == [
        ("user", "hi", False),
        ("assistant", "half ", True),
        ("user", "hi", False),
        ("assistant", "echo: hi", False),
    ]
    again = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-int")
    assert again["response"] == "echo: hi" and again["metrics"]["replayed"] is True


async def test_a_retry_after_a_partial_the_caller_stored_is_stored_whole(
    keyed_client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """The CLI's Ctrl-C: the caller closes the stream, then stores what it showed
    (``store_interrupted``); a retry with the key stores its complete answer beside it."""
    sid = await keyed_client.create_session(title="t")
    scripted.scripts["a"] = [Step(("one ", "two ", "three"), delay=0.05)]
    stream = keyed_client.stream("hi", session_id=sid, idempotency_key="k-cli")
    async for _ in stream:
        break
    await stream.aclose()
    assert await stream.store_interrupted("cancelled") is True
    result = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-cli")
    assert result["response"] == "echo: hi" and "replayed" not in result["metrics"]
    assert turns(keyed_client, sid) == [
        ("user", "hi", False),
        ("assistant", "one ", True),
        ("user", "hi", False),
        ("assistant", "echo: hi", False),
    ]


async def test_a_reader_that_stalls_past_its_lease_does_not_store_a_second_turn(
    keyed_client: OblixClient, scripted: ScriptedPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that stops reading is indistinguishable from a dead process once its lease
    passes: a retry takes the claim over and answers. The stalled try, read again, must not
    store a second turn nor overwrite the kept result."""
    monkeypatch.setattr(idempotency, "lease_for", lambda first_token_timeout: 0.3)
    sid = await keyed_client.create_session(title="t")
    scripted.scripts["a"] = [Step(("slow ", "answer"))]
    stalled = keyed_client.stream("hi", session_id=sid, idempotency_key="k-stall")
    assert await stalled.__anext__() == "slow "
    await anyio.sleep(0.5)  # the stalled try's lease passes
    retry = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-stall")
    assert retry["response"] == "echo: hi"
    with pytest.raises(OblixError, match="took over"):
        async for _ in stalled:
            pass
    await stalled.aclose()
    assert turns(keyed_client, sid) == [("user", "hi", False), ("assistant", "echo: hi", False)]
    again = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-stall")
    assert again["response"] == "echo: hi" and again["metrics"]["replayed"] is True


async def test_a_stalled_cloud_try_that_loses_its_claim_is_counted_not_stored(
    client: OblixClient, scripted: ScriptedPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stalled on its last chunk: the answer is complete (paid) when the reader comes back, but
    a retry took the claim over and answered. The stalled try fails, stores nothing, and its
    usage is recorded under an id of its own, beside the retry's: two paid answers, two records."""
    monkeypatch.setattr(idempotency, "lease_for", lambda first_token_timeout: 0.3)
    await client.hook_model("scripted", "c", local=False)
    sid = await client.create_session(title="t")
    scripted.scripts["c"] = [Step(("whole answer",))]
    stalled = client.stream("hi", session_id=sid, idempotency_key="k-cloud")
    assert await stalled.__anext__() == "whole answer"
    await anyio.sleep(0.5)
    retry = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-cloud")
    with pytest.raises(IdempotencyClaimLostError):
        await stalled.__anext__()
    await stalled.aclose()
    assert turns(client, sid) == [("user", "hi", False), ("assistant", retry["response"], False)]
    assert client.usage(since="1d")["total"]["requests"] == 2
    again = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-cloud")
    assert again["metrics"]["replayed"] is True and client.usage(since="1d")["total"]["requests"] == 2


@pytest.fixture
async def short_ttl_client(
    request: pytest.FixtureRequest,
    home: Path,
    scripted: ScriptedPlugin,
    make_client: Callable[..., OblixClient],
) -> OblixClient:
    kind = request.param if hasattr(request, "param") else "file"
    settings = attrs.evolve(QUICK, idempotency_ttl=1.0)
    client = make_client(home=home, plugins=[scripted], execution=settings, **store_options(request, kind))
    await client.hook_model("scripted", "a", local=True)
    return client


@pytest.mark.parametrize("short_ttl_client", ["file", "redis"], indirect=True)
async def test_a_key_used_again_after_its_ttl_is_a_new_request_stored_and_counted(
    short_ttl_client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """After the TTL the key is forgotten: the next request with it is a new request — its turn
    is stored (not dropped as a repeat of the old write) and its answer counted (not dropped as
    a repeat of the old request id); without a session it starts a new one."""
    client = short_ttl_client
    sid = await client.create_session(title="t")
    first = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-ttl")
    fresh = await client.execute("new", stream=False, idempotency_key="k-ttl-new")
    await anyio.sleep(1.2)
    second = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-ttl")
    assert "replayed" not in second["metrics"] and second["request_id"] != first["request_id"]
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert len({m["id"] for m in messages}) == 4
    assert client.usage(since="1d")["total"]["requests"] == 3
    again = await client.execute("new", stream=False, idempotency_key="k-ttl-new")
    assert again["session_id"] != fresh["session_id"]


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


async def test_a_replayed_tool_call_answer_yields_no_empty_text(client: OblixClient) -> None:
    """An answer made only of tool calls streams no text; its replay must not stream an empty
    chunk either (the server took that chunk for a text answer and streamed no tool calls).
    The model is the real OpenAI backend against a loopback OpenAI-compatible double."""
    with LoopbackOpenAI("tool") as cloud:
        await client.hook_model("openai", "gpt-tools", endpoint=cloud.url, api_key="sk-test-000")
        ask = {"tools": [WEATHER], "store": False, "idempotency_key": "k-tools"}
        first = await client.execute("Weather in Paris?", stream=False, **ask)
        assert first["tool_calls"] and first["response"] == ""
        stream = client.stream("Weather in Paris?", **ask)
        assert [chunk async for chunk in stream] == []
        assert stream.result is not None and stream.result["metrics"]["replayed"] is True
        assert stream.result["tool_calls"] == first["tool_calls"]
        assert cloud.chat_requests == 1


async def test_a_store_failing_at_the_end_does_not_hide_the_answer(
    tmp_path: Path, home: Path, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    """Redis refuses writes (out of memory) while the model answers: storing the exchange fails,
    and so does releasing the key. The caller must still get ExchangeNotStoredError with the
    answer (the release's failure must not replace it)."""
    own = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisSessionStore(url=own.url, prefix=unique_prefix())
        client = make_client(home=home, plugins=[scripted], execution=QUICK, session_store=store)
        await client.hook_model("scripted", "a", local=True)
        sid = await client.create_session(title="t")
        scripted.scripts["a"] = [Step(("the answer",), delay=0.5)]
        admin = own.client()

        async def refuse_writes() -> None:
            await anyio.sleep(0.25)  # the key is claimed; the model is answering
            admin.config_set("maxmemory", 1)

        caught: list[OblixError] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(refuse_writes)
            try:
                await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-down")
            except OblixError as exc:
                caught.append(exc)
        assert len(caught) == 1 and isinstance(caught[0], ExchangeNotStoredError), caught
        assert caught[0].answer == "the answer"
        admin.config_set("maxmemory", 0)
    finally:
        own.stop()


async def test_an_answer_paid_twice_after_a_failed_store_is_counted_twice_and_replayed_once(
    tmp_path: Path,
    home: Path,
    scripted: ScriptedPlugin,
    make_client: Callable[..., OblixClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first try's answer is recorded but not stored (Redis refuses writes); the retry
    takes the claim over and answers again. Both answers were generated (paid, for a cloud
    model), so the ledger must hold both — the retry's is not dropped as a repeat of the first
    try's request id — and a replay after that adds nothing. The ledger is SQLite here, so that
    Redis refusing writes fails the session store only."""
    monkeypatch.setattr(idempotency, "lease_for", lambda first_token_timeout: 0.5)
    own = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisSessionStore(url=own.url, prefix=unique_prefix())
        client = make_client(home=home, plugins=[scripted], execution=QUICK, session_store=store)
        assert client.engine.ledger is not None
        client.engine.ledger.close()  # the ledger in SQLite: the refused writes hit only the store
        client.engine.ledger = write_behind(SqliteUsageLedger(home / "usage.sqlite3"))
        await client.hook_model("scripted", "c", local=False)
        sid = await client.create_session(title="t")
        scripted.scripts["c"] = [Step(("first",), delay=0.3)]
        admin = own.client()

        async def refuse_writes() -> None:
            await anyio.sleep(0.15)
            admin.config_set("maxmemory", 1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(refuse_writes)
            with pytest.raises(ExchangeNotStoredError):
                await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-paid")
        admin.config_set("maxmemory", 0)
        await anyio.sleep(0.6)  # the first try's lease lapses (its release failed too)
        second = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-paid")
        assert second["response"] == "echo: hi" and len(scripted.calls["c"]) == 2
        assert turns(client, sid) == [("user", "hi", False), ("assistant", "echo: hi", False)]
        assert client.usage(since="1d")["total"]["requests"] == 2
        again = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-paid")
        assert again["metrics"]["replayed"] is True
        assert client.usage(since="1d")["total"]["requests"] == 2
    finally:
        own.stop()


async def test_a_request_refused_before_any_model_ran_leaves_its_key_free(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """A keyed request for a session that does not exist fails before any model runs: nothing
    can have been stored or counted, so the key is free for the corrected request."""
    await client.hook_model("scripted", "a", local=True)
    sid = await client.create_session(title="t")
    with pytest.raises(SessionNotFoundError):
        await client.execute("hi", session_id="0" * 32, stream=False, idempotency_key="k-typo")
    result = await client.execute("hi", session_id=sid, stream=False, idempotency_key="k-typo")
    assert result["response"] == "echo: hi" and "replayed" not in result["metrics"]


HOLD_LOCK = (
    "import filelock, sys, time\n"
    "lock = filelock.FileLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``path``'s file lock for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path) + ".lock", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


async def test_a_request_cancelled_while_its_claim_is_written_leaves_no_claim(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    """Cancelled while the claim's write waits for the record's file lock (held by another
    process): when the write goes through after all, the claim is released, so a retry runs at
    once (no wait for a lease, no 409 after ``idempotency_wait``)."""
    client.engine.executor.settings = QUICK
    await client.hook_model("scripted", "a", local=True)
    records = client.engine.idempotency
    assert isinstance(records, FileIdempotencyRecords)
    holder = hold_lock(records._path("k-cancel"), 0.8)
    try:
        with anyio.move_on_after(0.2):
            await client.execute("hi", stream=False, idempotency_key="k-cancel")
    finally:
        holder.wait()
    found = records.get("k-cancel")
    assert found is None or found.lease_until <= time.time()  # released: its lease has ended
    result = await client.execute("hi", stream=False, idempotency_key="k-cancel")
    assert result["response"] == "echo: hi"


async def test_a_record_locked_too_long_by_another_process_is_a_clear_error(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    records = client.engine.idempotency
    assert isinstance(records, FileIdempotencyRecords)
    records.lock_timeout = 0.2
    holder = hold_lock(records._path("k-locked"), 1.0)
    try:
        with pytest.raises(SessionError, match="locked by another process"):
            await client.execute("hi", stream=False, idempotency_key="k-locked")
    finally:
        holder.wait()
    assert len(scripted.calls["a"]) == 0


async def test_the_same_key_with_another_workspace_is_a_mismatch(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    workspace = await client.create_workspace("notes", private=True)
    await client.execute("hi", stream=False, idempotency_key="k-ws")
    with pytest.raises(IdempotencyKeyMismatchError, match="workspace") as caught:
        await client.execute("hi", stream=False, idempotency_key="k-ws", workspace_id=workspace)
    assert caught.value.fields == ("workspaces",)
    assert len(scripted.calls["a"]) == 1


def test_a_sweep_never_deletes_a_claim_made_after_it_read_the_expired_record(tmp_path: Path) -> None:
    """The sweep reads an expired record, then takes the key's lock to delete it; a claim made
    in between (by another process) must survive."""
    now = time.time()
    folder = tmp_path / "idem"
    other = FileIdempotencyRecords(folder)
    other.claim("k", KeyedRecord("running", {}, "old", now - 5, now - 1))  # expired at once

    class ClaimedMeanwhile(FileIdempotencyRecords):
        """Real file records whose lock is first taken by another process's claim."""

        def _lock(self, path: Path) -> filelock.BaseFileLock:
            if path.suffix == ".json" and path.exists():
                assert other.claim("k", KeyedRecord("running", {}, "new", now + 60, now + 60)) is None
            return super()._lock(path)

    assert ClaimedMeanwhile(folder).sweep() == 0
    found = other.get("k")
    assert found is not None and found.owner == "new"
    assert (folder / f"{key_digest('k')}.json").exists()


def running_record(owner: str) -> KeyedRecord:
    now = time.time()
    return KeyedRecord("running", {"prompt": "p"}, owner, now + 30, now + 60)


def test_a_damaged_redis_record_is_a_clear_error(redis_server: RedisServer) -> None:
    records = RedisIdempotencyRecords(redis_server.client(), unique_prefix())
    redis_server.client().set(records._key("k"), b"{damaged")
    for call in (lambda: records.claim("k", running_record("a")), lambda: records.get("k")):
        with pytest.raises(SessionCorruptedError, match="DEL"):
            call()


def test_s3_claims_that_keep_losing_their_race_fail_clearly_and_claim_nothing(
    server: S3Server,
) -> None:
    """Every conditional write of a claim loses to another writer (a real 412 from S3, here
    another writer putting an expired record first each time): after its tries the claim is a
    SessionError — never taken for a claim it does not hold."""
    store = S3SessionStore(bucket=new_bucket(server.url), endpoint_url=server.url)
    records = store.idempotency_records()
    real_put = records.objects.put

    def put_after_another_writer(key: str, body: bytes, **kwargs: Any) -> str:
        gone = KeyedRecord("running", {}, os.urandom(8).hex(), time.time() - 1, time.time() - 1)
        real_put(key, gone.to_json().encode())  # it wins: a new ETag
        return real_put(key, body, **kwargs)

    records.objects.put = put_after_another_writer  # type: ignore[method-assign]
    try:
        with pytest.raises(SessionError, match="contended"):
            records.claim("k", running_record("a"))
    finally:
        records.objects.put = real_put  # type: ignore[method-assign]
    assert records.claim("k", running_record("b")) is None  # the race over, the key is claimed
    store.close()


def test_a_damaged_s3_record_is_a_clear_error_and_is_not_overwritten(server: S3Server) -> None:
    """As the file and Redis records: a damaged S3 record names its object and stays as found
    (it was silently taken for absent and overwritten)."""
    store = S3SessionStore(bucket=new_bucket(server.url), endpoint_url=server.url)
    records = store.idempotency_records()
    name = records._key("k")
    records.objects.put(name, b"{damaged")
    for call in (lambda: records.claim("k", running_record("a")), lambda: records.get("k")):
        with pytest.raises(SessionCorruptedError, match="Delete the object"):
            call()
    found = records.objects.get(name)
    assert found is not None and found[0] == b"{damaged"
    store.close()
