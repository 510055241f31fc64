"""Per-request cost versus session length: ``execute`` reads history warm, by token budget.

``execute`` on sessions of 10, 2,000 and 10,000 stored messages of short turns (a few
characters each, so that some 700 of them fit the 4,096-token window: the worst case
for per-message work) with an instant model (the scripted test backend), on the file
store, on the Redis store (a private ``redis-server`` on loopback) and on the S3 store
(moto's S3 server, ``tests.s3_server``, in a process of its own on loopback), beside
the cost of loading the whole session (what reading "everything, then trimming" would
pay).
Sizes are measured interleaved, round by round, so that a busy machine slows them all
alike. The goal: ``execute`` at 2,000 messages within 1.3x of ``execute`` at 10, and
10,000 within 1.5x.

Run: ``.venv/bin/python -m benchmarks.history_bench [--repeat 40] [--stores file,redis,s3]
[--profile 2000]`` (``--profile N`` prints a cProfile of ``execute`` at N messages on
the file store instead of the table).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import anyio

from benchmarks._table import median_ms, print_table
from oblix_core.client import OblixClient
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.testing import ScriptedPlugin

SIZES = (10, 2_000, 10_000)
PROMPT = "And then?"


def _session(size: int) -> SessionRecord:
    messages = tuple(Message("user" if i % 2 == 0 else "assistant", f"{i % 10} ok") for i in range(size))
    return SessionRecord(id=new_session_id(), title=f"{size} messages", messages=messages)


@contextmanager
def _s3_server() -> Iterator[dict[str, str]]:
    """Store options for a fresh bucket on a moto S3 server process (test credentials)."""
    from tests.s3_server import TEST_ENV, S3Process, new_bucket

    os.environ.update(TEST_ENV)
    server = S3Process().start()
    try:
        yield {"bucket": new_bucket(server.url), "endpoint_url": server.url}
    finally:
        server.stop()


@asynccontextmanager
async def _client(store: str, home: Path) -> AsyncIterator[OblixClient]:
    with ExitStack() as stack:
        if store == "redis":
            from benchmarks.redis_bench import private_server

            url = stack.enter_context(private_server())
            client = OblixClient(
                home=home, session_store="redis", store_options={"url": url}, plugins=[ScriptedPlugin()]
            )
        elif store == "s3":
            options = stack.enter_context(_s3_server())
            client = OblixClient(
                home=home, session_store="s3", store_options=options, plugins=[ScriptedPlugin()]
            )
        else:
            client = OblixClient(home=home, plugins=[ScriptedPlugin()])
        async with client:
            await client.hook_model("scripted", "instant", context_window=4096)
            yield client


async def _once(client: OblixClient, session_id: str) -> float:
    started = time.perf_counter()
    await client.execute(PROMPT, session_id=session_id, stream=False)
    return time.perf_counter() - started


async def _store_rows(store: str, repeat: int) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with _client(store, Path(tmp)) as client:
            records = [_session(size) for size in SIZES]
            for record in records:
                await anyio.to_thread.run_sync(client.store.create, record)
                await client.execute("warm up", session_id=record.id, stream=False)
            executes: dict[str, list[float]] = {r.id: [] for r in records}
            for _ in range(repeat):  # interleaved: every size meets the same machine
                for record in records:
                    executes[record.id].append(await _once(client, record.id))
            model = client.engine.models["scripted:instant"]
            baseline = median_ms(executes[records[0].id])
            for size, record in zip(SIZES, records, strict=True):
                loads = []
                for _ in range(max(3, repeat // 8)):
                    started = time.perf_counter()
                    await client.aload_session(record.id)
                    loads.append(time.perf_counter() - started)
                await _once(client, record.id)
                sent = model.owner.calls["instant"][-1].messages  # type: ignore[attr-defined]
                ms = median_ms(executes[record.id])
                rows.append((store, f"{size:,} messages", ms, ms / baseline, median_ms(loads), len(sent)))
    return rows


async def _profile(size: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with _client("file", Path(tmp)) as client:
            record = _session(size)
            await anyio.to_thread.run_sync(client.store.create, record)
            await client.execute("warm up", session_id=record.id, stream=False)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(repeat):
                await _once(client, record.id)
            profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


async def main(repeat: int, stores: list[str], profile: int | None) -> None:
    if profile:
        await _profile(profile, repeat)
        return
    rows = []
    for store in stores:
        if store == "redis" and not shutil.which("redis-server"):
            print("redis-server is not installed: skipping the Redis store")
            continue
        rows += await _store_rows(store, repeat)
    print_table(
        "execute() cost by session length, short turns (median ms; ratio = execute / execute at 10 messages)",
        ["store", "session", "execute ms", "ratio", "whole load ms", "messages sent"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--stores", default="file,redis,s3")
    parser.add_argument("--profile", type=int, default=None)
    args = parser.parse_args()
    anyio.run(main, args.repeat, args.stores.split(","), args.profile)
