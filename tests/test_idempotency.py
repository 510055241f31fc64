"""``execute(..., idempotency_key=...)``: a retried request is answered once — replayed, not
generated, stored or counted again — on the file store, Redis, a Redis Cluster and S3.

The model is the scripted backend (a test double that counts its calls); the crash test
kills a real writer process with ``os._exit`` after it stored the exchange and before it
recorded the result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from oblix_core.client import OblixClient
from oblix_core.errors import IdempotencyInFlightError, IdempotencyKeyMismatchError, OblixError
from oblix_core.testing import ScriptedPlugin
from oblix_core.testing.scripted import Step
from oblix_redis.store import RedisSessionStore
from oblix_s3.store import S3SessionStore
from tests import redis_servers
from tests.conftest import FAST
from tests.redis_servers import RedisClusterServers, RedisServer, unique_prefix
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio
redis_server = redis_servers.redis_server
redis_cluster = redis_servers.redis_cluster

STORES = ["file", "redis", "redis-cluster", "s3"]


def store_options(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    """``OblixClient`` keyword arguments for a fresh store of ``kind`` on a real server."""
    if kind == "file":
        return {}
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return {"session_store": RedisSessionStore(url=server.url, prefix=unique_prefix())}
    if kind == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        return {"session_store": RedisSessionStore(url=cluster.url, prefix=unique_prefix(), cluster=True)}
    s3: S3Server = request.getfixturevalue("server")
    return {"session_store": S3SessionStore(bucket=new_bucket(s3.url), endpoint_url=s3.url)}


@pytest.fixture(params=STORES)
async def keyed_client(
    request: pytest.FixtureRequest,
    home: Path,
    scripted: ScriptedPlugin,
    make_client: Callable[..., OblixClient],
) -> OblixClient:
    client = make_client(
        home=home, plugins=[scripted], execution=FAST, **store_options(request, request.param)
    )
    await client.hook_model("scripted", "a", local=True)
    return client


async def test_a_repeat_is_replayed_not_generated_stored_or_counted(
    keyed_client: OblixClient, scripted: ScriptedPlugin
) -> None:
    sid = await keyed_client.create_session(title="t")
    first = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-1")
    again = await keyed_client.execute("hi", session_id=sid, stream=False, idempotency_key="k-1")
    assert again["response"] == first["response"] and again["request_id"] == first["request_id"]
    assert again["metrics"]["replayed"] is True and "replayed" not in first["metrics"]
    assert len(scripted.calls["a"]) == 1
    messages = keyed_client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    totals = keyed_client.usage(since="1d")
    assert totals["total"]["requests"] == 1


async def test_without_a_session_the_repeat_names_the_same_new_session(
    keyed_client: OblixClient, scripted: ScriptedPlugin
) -> None:
    first = await keyed_client.execute("hi", stream=False, idempotency_key="k-new")
    again = await keyed_client.execute("hi", stream=False, idempotency_key="k-new")
    assert again["session_id"] == first["session_id"]
    assert len(keyed_client.list_sessions()) == 1 and len(scripted.calls["a"]) == 1


async def test_another_request_with_the_key_is_refused_naming_what_differs(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    await client.execute("hi", stream=False, idempotency_key="k", temperature=0.5)
    with pytest.raises(IdempotencyKeyMismatchError, match=r"differs in: prompt, temperature") as err:
        await client.execute("bye", stream=False, idempotency_key="k")
    assert err.value.fields == ("prompt", "temperature")
    assert len(scripted.calls["a"]) == 1


async def test_a_repeat_while_the_first_runs_waits_for_its_answer(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    scripted.scripts["a"] = [Step(("slow ", "answer"), delay=0.3)]
    results: list[dict[str, Any]] = []

    async def ask() -> None:
        results.append(await client.execute("hi", stream=False, idempotency_key="k"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.sleep(0.1)
        tg.start_soon(ask)
    assert [r["response"] for r in results] == ["slow answer", "slow answer"]
    assert len(scripted.calls["a"]) == 1


async def test_a_repeat_that_waits_too_long_is_told_to_retry_later(
    home: Path, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    client = make_client(home=home, plugins=[scripted], execution=attrs.evolve(FAST, idempotency_wait=0.2))
    await client.hook_model("scripted", "a", local=True)
    scripted.scripts["a"] = [Step(("slow ", "answer"), delay=0.5)]
    errors: list[IdempotencyInFlightError] = []

    async def ask_later() -> None:
        await anyio.sleep(0.1)
        try:
            await client.execute("hi", stream=False, idempotency_key="k")
        except IdempotencyInFlightError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask_later)
        await client.execute("hi", stream=False, idempotency_key="k")
    assert len(errors) == 1 and errors[0].retry_after >= 1
    assert len(scripted.calls["a"]) == 1


async def test_a_key_is_forgotten_after_its_ttl(
    home: Path, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> None:
    client = make_client(home=home, plugins=[scripted], execution=attrs.evolve(FAST, idempotency_ttl=1.0))
    await client.hook_model("scripted", "a", local=True)
    await client.execute("hi", stream=False, idempotency_key="k")
    await anyio.sleep(1.2)
    again = await client.execute("hi", stream=False, idempotency_key="k")
    assert "replayed" not in again["metrics"] and len(scripted.calls["a"]) == 2


async def test_a_failed_request_can_be_retried_with_its_key(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    scripted.scripts["a"] = [Step(fail="permanent"), Step(("ok",))]
    with pytest.raises(OblixError):
        await client.execute("hi", stream=False, idempotency_key="k")
    result = await client.execute("hi", stream=False, idempotency_key="k")
    assert result["response"] == "ok" and "replayed" not in result["metrics"]


async def test_a_streamed_repeat_yields_the_stored_answer(
    client: OblixClient, scripted: ScriptedPlugin
) -> None:
    await client.hook_model("scripted", "a", local=True)
    await client.execute("hi", stream=False, idempotency_key="k")
    stream = client.stream("hi", idempotency_key="k")
    chunks = [c async for c in stream]
    assert "".join(chunks) == "echo: hi" and stream.result is not None
    assert stream.result["metrics"]["replayed"] is True


async def test_bad_keys_are_refused(client: OblixClient) -> None:
    await client.hook_model("scripted", "a", local=True)
    for key in ("", "x" * 256, "a\nb", 7):
        with pytest.raises(OblixError, match="Invalid idempotency key"):
            await client.execute("hi", stream=False, idempotency_key=key)


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, anyio
    from oblix_core.client import OblixClient
    from oblix_core.request import idempotency
    from oblix_core.testing import ScriptedPlugin
    from oblix_s3.store import S3SessionStore
    from oblix_redis.store import RedisSessionStore

    idempotency.lease_for = lambda first_token_timeout: 0.5  # a dead process's claim expires quickly

    def die_after(write):
        def written_then_killed(*args, **kwargs):
            write(*args, **kwargs)
            os._exit(9)  # the exchange is stored; its result is not yet kept under the key
        return written_then_killed

    async def main():
        kind, arg, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
        store = None
        if kind == "redis":
            store = RedisSessionStore(url=arg, prefix=prefix)
        elif kind == "s3":
            store = S3SessionStore(bucket=prefix, endpoint_url=arg)
        kwargs = {"session_store": store} if store else {}
        client = OblixClient(plugins=[ScriptedPlugin()], **kwargs)
        client.store.create = die_after(client.store.create)
        await client.hook_model("scripted", "a", local=True)
        await client.execute("hi", stream=False, idempotency_key="crash-key")

    anyio.run(main)
    """
)


@pytest.mark.parametrize("kind", ["file", "redis", "s3"])
async def test_a_try_killed_after_storing_is_answered_from_the_store(
    kind: str,
    request: pytest.FixtureRequest,
    home: Path,
    scripted: ScriptedPlugin,
    make_client: Callable[..., OblixClient],
    tmp_path: Path,
) -> None:
    arg, prefix, options = "-", "-", {}
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        arg, prefix = server.url, unique_prefix()
        options = {"session_store": RedisSessionStore(url=arg, prefix=prefix)}
    elif kind == "s3":
        s3: S3Server = request.getfixturevalue("server")
        arg, prefix = s3.url, new_bucket(s3.url)
        options = {"session_store": S3SessionStore(bucket=prefix, endpoint_url=arg)}
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER)
    done = subprocess.run(
        [sys.executable, str(script), kind, arg, prefix],
        env=os.environ | {"OBLIX_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 9, done.stderr
    client = make_client(home=home, plugins=[scripted], execution=FAST, **options)
    await client.hook_model("scripted", "a", local=True)
    await anyio.sleep(0.6)  # the dead writer's lease passes
    result = await client.execute("hi", stream=False, idempotency_key="crash-key")
    assert result["response"] == "echo: hi" and result["metrics"]["replayed"] is True
    assert len(scripted.calls["a"]) == 0  # not generated again
    sessions = client.list_sessions()
    assert len(sessions) == 1
    messages = client.load_session(sessions[0]["id"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert client.usage(since="1d")["total"]["requests"] == 1
