"""``oblix server``: latency it adds over the in-process client, and requests/s it sustains.

In one run, each path in turn (never two models loaded at once on this 2-core machine):

* latency, the packaged Gemma 3 270M, greedy, ``NEW_TOKENS`` new tokens, time to the
  first text and to the end of the answer, with 1 and with 16 concurrent clients:
  - in-process: ``OblixClient.stream(..., store=False)`` with the llama.cpp backend;
  - ``oblix server`` (same defaults, a separate process) over HTTP, streamed (SSE), with
    ``httpx`` as the client;
  - ``python -m llama_cpp.server`` on the same GGUF (alpaca prompt format, same threads).
* requests/s, 16 concurrent clients for ``SECONDS`` s each:
  - with an instant backend (the scripted test double, which echoes at once): in-process
    ``collect()`` versus ``oblix server`` (one process; whole and streamed answers), driven
    by a lean load generator and by ``httpx``, and ``oblix server --workers 2``; the paths
    take turns over ``INSTANT_ROUNDS`` rounds, each ratio against its own round's
    in-process rate (``--instant-only`` runs just these);
  - one-token answers from the real model: ``oblix server`` versus ``llama_cpp.server``.
* ``--health-only``: ``GET /health`` latency, idle and while large requests (near the body
  and message bounds) are prepared: what reaches the event loop of their preparation.

Agents are off on every path (they sample the CPU in a thread, which would add noise).
Run: ``.venv/bin/python -m benchmarks.server_bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import psutil

from benchmarks import http_load
from benchmarks._table import print_table
from oblix import ModelType, OblixClient
from oblix_core.request.execution import ExecutionSettings
from oblix_core.testing import ScriptedPlugin
from oblix_llamacpp.packaged import packaged_model_path
from tests.server_process import OblixServer, model_toml, write_plugin_dist
from tests.servers import LlamaServer

PROMPT = "Count from 1 to 100, separated by commas."
NEW_TOKENS = 16
SECONDS = 5.0
SETTLE = 1.5
#: 16 clients queue on one model: no first-token timeout on any path.
PATIENT = ExecutionSettings(first_token_timeout=None, total_timeout=None)
PATIENT_TOML = "[execution]\nfirst_token_timeout = 3600\ntotal_timeout = 3600\n\n"
CHAT = "/v1/chat/completions"
Sample = tuple[float, float]  # (time to first text, total), seconds


async def concurrently(run: Callable[[], Awaitable[Sample]], clients: int) -> list[Sample]:
    samples: list[Sample] = []

    async def one() -> None:
        samples.append(await run())

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one)
    return samples


async def inprocess_run(client: OblixClient) -> Sample:
    started = time.perf_counter()
    first = None
    async for _ in client.stream(PROMPT, max_tokens=NEW_TOKENS, temperature=0.0, store=False):
        first = first or time.perf_counter()
    assert first is not None
    return first - started, time.perf_counter() - started


async def http_run(http: httpx.AsyncClient, url: str, model: str, max_tokens: int = NEW_TOKENS) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
    assert first is not None
    return first - started, time.perf_counter() - started


async def interleaved(paths: dict[str, Callable[[], Awaitable[Sample]]], rounds: int) -> Latencies:
    """Each path at 1 client (``rounds`` requests) and at 16 (bursts), rounds interleaved.

    The paths take turns, rotating which goes first, so that the load of this shared
    machine drifts over all of them alike; a first request per path warms up. Before
    each turn the other processes get ``SETTLE`` s to go idle (llama.cpp's worker
    threads keep polling for a while after a generation, taking the cores).
    """
    names = list(paths)
    results: Latencies = {name: {1: [], 16: []} for name in names}
    for name in names:
        await paths[name]()
    for clients, count in ((1, rounds), (16, max(2, rounds // 2))):
        for round_ in range(count):
            for i in range(len(names)):
                name = names[(round_ + i) % len(names)]
                await anyio.sleep(SETTLE)
                results[name][clients] += await concurrently(paths[name], clients)
    return results


async def rate(run: Callable[[], Awaitable[object]], clients: int = 16, seconds: float = SECONDS) -> float:
    """Requests/s that ``clients`` concurrent loops of ``run`` complete in ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await run()
            done += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(loop)
    return done / (time.perf_counter() - started)


def median_ms(samples: list[Sample], index: int) -> float:
    return statistics.median(s[index] for s in samples) * 1000


Latencies = dict[str, dict[int, list[Sample]]]


async def measure_latency(home: Path, rounds: int, threads: int) -> tuple[Latencies, dict[str, float]]:
    """Latency of each path, and one-token answers/s of both servers."""
    (home / "server").mkdir()
    (home / "server" / "config.toml").write_text(
        PATIENT_TOML + model_toml("llama_cpp", "gemma-3-270m", n_threads=threads)
    )
    llama = LlamaServer(packaged_model_path(), threads=threads).start()
    try:
        async with (
            OblixClient(home=home / "inprocess", execution=PATIENT) as client,
            httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=64)) as http,
        ):
            await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m", n_threads=threads)
            with OblixServer(home / "server") as server:
                paths = {
                    "in-process OblixClient.stream": lambda: inprocess_run(client),
                    "oblix server (HTTP, SSE)": lambda: http_run(http, server.base_url, "auto"),
                    "llama_cpp.server (HTTP, SSE)": lambda: http_run(http, llama.url, "gemma"),
                }
                results = await interleaved(paths, rounds) if rounds else {}
                rates = {
                    "oblix server": await rate(lambda: http_run(http, server.base_url, "auto", 1), 4),
                    "llama_cpp.server": await rate(lambda: http_run(http, llama.url, "gemma", 1), 4),
                }
    finally:
        llama.kill()
    return results, rates


#: Rounds of the instant-backend rates: each path once per round, in turn.
INSTANT_ROUNDS = 3
Rates = dict[str, list[float]]


async def measure_instant(home: Path, rounds: int = INSTANT_ROUNDS) -> Rates:
    """Requests/s with the scripted backend: in-process versus through the server, rounds interleaved.

    Two load generators drive the server, each with 16 keep-alive connections: the lean
    one (:mod:`benchmarks.http_load`: raw asyncio streams replaying one pre-encoded
    request, a few percent of a core) and ``httpx.AsyncClient`` (an HTTP client
    library, which takes about as much CPU as the server on this 2-core machine).
    """
    (home / "instant").mkdir()
    (home / "instant" / "config.toml").write_text(model_toml("scripted", "echo"))
    plugin_dir = write_plugin_dist(home / "plugin")
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    quiet = ("--log-level", "warning")
    rates: Rates = {}
    async with (
        OblixClient(home=home / "instant-inprocess", plugins=[ScriptedPlugin()]) as client,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http,
    ):
        await client.hook_model("scripted", "echo")
        with (
            OblixServer(home / "instant", *quiet, plugin_dir=plugin_dir) as one,
            OblixServer(home / "instant", *quiet, "--workers", "2", plugin_dir=plugin_dir) as two,
        ):
            url = f"{one.base_url}/chat/completions"

            async def whole() -> None:
                (await http.post(url, json=body)).raise_for_status()

            async def streamed() -> None:
                async with http.stream("POST", url, json=body | {"stream": True}) as response:
                    async for _ in response.aiter_lines():
                        pass

            def lean(server: OblixServer, stream: bool) -> Callable[[], Awaitable[float]]:
                payload = body | {"stream": stream}
                request = http_load.post_request("127.0.0.1", server.port, CHAT, payload, {})
                return lambda: http_load.rate("127.0.0.1", server.port, request, 16, SECONDS)

            paths: dict[str, Callable[[], Awaitable[float]]] = {
                "in-process OblixClient (collect)": lambda: rate(
                    lambda: client.stream("hi", store=False).collect()
                ),
                "oblix server, whole answers (lean generator)": lean(one, False),
                "oblix server, streamed answers (lean generator)": lean(one, True),
                "oblix server, whole answers (httpx)": lambda: rate(whole),
                "oblix server, streamed answers (httpx)": lambda: rate(streamed),
                "oblix server --workers 2, whole answers (lean generator)": lean(two, False),
            }
            for name, path in paths.items():  # warm up: first connections, caches, the ledger
                rates[name] = []
                await path()
            for _ in range(rounds):
                for name, path in paths.items():
                    await anyio.sleep(SETTLE)
                    rates[name].append(await path())
    return rates


#: The large requests of the health measurement: messages each, characters per message, in parallel.
BIG_MESSAGES, BIG_CHARS, BIG_PARALLEL = 2000, 1900, 4


def measure_health(home: Path, rounds: int = 3) -> dict[str, list[float]]:
    """``GET /health`` latencies (s), idle and while ``BIG_PARALLEL`` requests of ``BIG_MESSAGES``
    messages (a body near the 4 MiB limit, under ``--max-messages``) are prepared and answered."""
    (home / "health").mkdir()
    (home / "health" / "config.toml").write_text(model_toml("scripted", "echo"))
    plugin_dir = write_plugin_dist(home / "health-plugin")
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "x" * BIG_CHARS}
        for i in range(BIG_MESSAGES - 1)
    ]
    body = json.dumps({"model": "auto", "messages": messages}).encode()
    times: dict[str, list[float]] = {"idle": [], "during": []}
    with OblixServer(home / "health", "--log-level", "warning", plugin_dir=plugin_dir) as server:

        def probe() -> float:
            started = time.perf_counter()
            httpx.get(f"{server.root}/health", timeout=60).raise_for_status()
            return time.perf_counter() - started

        times["idle"] = [probe() for _ in range(50)]
        for _ in range(rounds):

            def big() -> None:
                headers = {"Content-Type": "application/json"}
                url = f"{server.base_url}/chat/completions"
                httpx.post(url, content=body, headers=headers, timeout=120).raise_for_status()

            workers = [threading.Thread(target=big) for _ in range(BIG_PARALLEL)]
            for worker in workers:
                worker.start()
            while any(worker.is_alive() for worker in workers):
                times["during"].append(probe())
                time.sleep(0.02)
    return times


def report_health(times: dict[str, list[float]]) -> None:
    rows = []
    for name, values in times.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        rows.append((name, len(values), statistics.median(values) * 1000, p95 * 1000, max(values) * 1000))
    print_table(
        f"GET /health while {BIG_PARALLEL} requests of {BIG_MESSAGES} messages "
        f"({BIG_MESSAGES * BIG_CHARS / 1e6:.1f} MB each) are prepared (scripted model), ms",
        ["when", "probes", "median", "p95", "max"],
        rows,
    )


def report(results: Latencies, rates: dict[str, float], instant: Rates, threads: int) -> None:
    rows = []
    for name, by_clients in results.items():
        base = results["in-process OblixClient.stream"]
        for clients, samples in by_clients.items():
            ttfb, total = median_ms(samples, 0), median_ms(samples, 1)
            added_ttfb = ttfb - median_ms(base[clients], 0)
            added_total = total - median_ms(base[clients], 1)
            rows.append((name, clients, ttfb, total, f"{added_ttfb:+.1f}", f"{added_total:+.1f}",
                         f"{total / median_ms(base[clients], 1):.3f}"))  # fmt: skip
    if rows:
        print_table(
            f"Gemma 3 270M Q4_K_M, greedy, {NEW_TOKENS} new tokens, {threads} threads; medians "
            "(16 clients: one burst, each request's own times)",
            ["path", "clients", "TTFB ms", "total ms", "TTFB added ms", "total added ms", "total ratio"],
            rows,
        )
    if rates:
        ours, peer = rates["oblix server"], rates["llama_cpp.server"]
        print_table(
            "One-token answers from the real model, 4 concurrent clients, requests/s (higher is better)",
            ["server", "requests/s", "ratio"],
            [("llama_cpp.server", peer, "1.000"), ("oblix server", ours, f"{ours / peer:.3f}")],
        )
    base = instant["in-process OblixClient (collect)"]
    rows = []
    for name, values in instant.items():
        ratios = [value / inproc for value, inproc in zip(values, base, strict=True)]
        rows.append((name, statistics.median(values), f"{statistics.median(ratios):.3f}",
                     f"{min(ratios):.3f}-{max(ratios):.3f}"))  # fmt: skip
    print_table(
        f"Instant backend (scripted test double), 16 concurrent clients, {SECONDS:g} s per path, "
        f"{len(base)} interleaved rounds, requests/s (medians; each ratio against the in-process "
        "rate of its own round)",
        ["path", "requests/s", "ratio", "ratio range"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (0: only the rates)")
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--instant-only", action="store_true", help="only the instant-backend rates")
    parser.add_argument("--instant-rounds", type=int, default=INSTANT_ROUNDS)
    parser.add_argument("--health-only", action="store_true", help="only /health under large requests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        if args.health_only:
            report_health(measure_health(home))
            return
        results: Latencies = {}
        rates: dict[str, float] = {}
        if not args.instant_only:
            results, rates = anyio.run(measure_latency, home, args.rounds, args.threads)
        instant = anyio.run(measure_instant, home, args.instant_rounds)
    report(results, rates, instant, args.threads)


if __name__ == "__main__":
    main()
