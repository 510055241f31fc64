"""Time to fail over from a broken primary to a healthy backup, with default settings.

Three primaries, each an OpenAI-compatible loopback endpoint reached through the real
``openai`` client (Oblix's OpenAI backend, default options and ``ExecutionSettings``):

* **dead**        -- the server is gone: the port refuses connections;
* **refusing**    -- the server answers every chat request with HTTP 503;
* **black-holed** -- the server accepts the connection and never answers.

The backup is a healthy loopback server. For each primary: the first request (it pays
for the failure), the next request from the same client (the primary is cooling down),
and the first request of a new client sharing ``$OBLIX_HOME`` (what the next one-shot
``oblix run`` pays: the cooldown is persisted). Ratios are against the same request
sent to the backup alone (Oblix with only the backup hooked), measured in the same run.
One run, since the black-holed case costs the 10 s first-byte timeout by design.

Run: ``.venv/bin/python -m benchmarks.failover_bench``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks._table import print_table
from oblix import ModelType, OblixClient
from tests.openai_loopback import LoopbackOpenAI


async def _client(home: Path, *servers: tuple[str, LoopbackOpenAI]) -> OblixClient:
    client = OblixClient(home=home)
    for name, server in servers:
        await client.hook_model(ModelType.OPENAI, name, endpoint=server.url)
    return client


async def _timed(client: OblixClient) -> tuple[float, str]:
    started = time.perf_counter()
    result = await client.execute("hi", stream=False, store=False)
    return (time.perf_counter() - started) * 1000, result["model_id"]


async def baseline(backup: LoopbackOpenAI, rounds: int = 15) -> float:
    """Median ms of a request to the backup alone."""
    with tempfile.TemporaryDirectory() as home:
        client = await _client(Path(home), ("backup", backup))
        samples = [(await _timed(client))[0] for _ in range(rounds)]
        await client.shutdown()
    return statistics.median(samples)


async def scenario(primary: LoopbackOpenAI, backup: LoopbackOpenAI) -> tuple[float, float, float]:
    """ms of: first request, next request, first request of a new client on the same home."""
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        client = await _client(home, ("primary", primary), ("backup", backup))
        first, answered = await _timed(client)
        second, answered_again = await _timed(client)
        assert answered == answered_again == "openai:backup", (answered, answered_again)
        client.executor.breaker.flush()
        await client.shutdown()
        fresh = await _client(home, ("primary", primary), ("backup", backup))
        third, answered = await _timed(fresh)
        assert answered == "openai:backup"
        await fresh.shutdown()
    return first, second, third


async def main() -> None:
    backup = LoopbackOpenAI().start()
    base = await baseline(backup)
    rows: list[list[object]] = []
    for label, mode in (
        ("dead (refused)", "ok"),
        ("refusing (HTTP 503)", "503"),
        ("black-holed", "blackhole"),
    ):
        primary = LoopbackOpenAI(mode).start()
        if label.startswith("dead"):
            primary.stop()
        first, second, third = await scenario(primary, backup)
        sent = primary.chat_requests
        primary.stop()
        rows.append([label, sent, first, first / base, second, second / base, third, third / base])
    backup.stop()
    print_table(
        f"Fail over to a healthy backup, default settings (ms; ratio = / backup alone, {base:.2f} ms)",
        ["primary", "sent", "1st ms", "ratio", "next ms", "ratio", "new client ms", "ratio"],
        rows,
    )


if __name__ == "__main__":
    anyio.run(main)
