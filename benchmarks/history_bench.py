"""Per-request cost versus session length: ``execute`` reads history by token budget.

``execute`` on sessions of 10, 2,000 and 10,000 stored messages with an instant model
(the scripted test backend, 4,096-token window) on the file store, beside the cost of
loading the whole session (what reading "everything, then trimming" would pay). The
goal: ``execute`` at 10,000 messages within 1.5x of ``execute`` at 10.

Run: ``.venv/bin/python -m benchmarks.history_bench [--repeat 40]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks._table import median_ms, print_table
from oblix_core.client import OblixClient
from oblix_core.records import Message, SessionRecord, new_session_id
from oblix_core.testing import ScriptedPlugin

TEXT = "A typical chat message of moderate length, about a hundred characters long, give or take a few."
SIZES = (10, 2_000, 10_000)


def _session(size: int) -> SessionRecord:
    messages = tuple(Message("user" if i % 2 == 0 else "assistant", f"{i} {TEXT}") for i in range(size))
    return SessionRecord(id=new_session_id(), title=f"{size} messages", messages=messages)


async def _measure(client: OblixClient, session_id: str, repeat: int) -> tuple[list[float], list[float]]:
    executes, loads = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        await client.execute(TEXT, session_id=session_id, stream=False)
        executes.append(time.perf_counter() - started)
    for _ in range(max(3, repeat // 5)):  # separately: its garbage would slow the executes
        started = time.perf_counter()
        await client.aload_session(session_id)
        loads.append(time.perf_counter() - started)
    return executes, loads


async def main(repeat: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        async with OblixClient(home=Path(tmp), plugins=[ScriptedPlugin()]) as client:
            await client.hook_model("scripted", "instant", context_window=4096)
            baseline = None
            for size in SIZES:
                record = _session(size)
                await anyio.to_thread.run_sync(client.store.create, record)
                await client.execute("warm up", session_id=record.id, stream=False)
                executes, loads = await _measure(client, record.id, repeat)
                sent = client.engine.models["scripted:instant"].owner.calls["instant"][-1].messages  # type: ignore[attr-defined]
                baseline = baseline or median_ms(executes)
                rows.append(
                    (
                        f"{size:,} messages",
                        median_ms(executes),
                        median_ms(executes) / baseline,
                        median_ms(loads),
                        len(sent),
                    )
                )
    print_table(
        "execute() cost by session length (median ms; ratio = execute / execute at 10 messages)",
        ["session", "execute ms", "ratio", "whole load ms", "messages sent"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=40)
    anyio.run(main, parser.parse_args().repeat)
