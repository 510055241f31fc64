"""Oblix versus raw ``llama_cpp.Llama`` versus llama.cpp's OpenAI-compatible server.

Same model (the packaged Gemma 3 270M), same prompt text, greedy decoding, up to 128
new tokens, in one run. Each path is timed from the call to the last token:

* raw:      ``Llama.create_completion(prompt, stream=True)`` in a dedicated thread;
* oblix:    ``OblixClient.stream(...)`` in an existing empty session with the llama.cpp
            backend (history load, routing, executor, worker-thread bridge, and the
            session write included);
* server:   ``OblixClient.stream(...)`` with the OpenAI backend against
            ``python -m llama_cpp.server`` on loopback (same model file and threads).

Run: ``.venv/bin/python -m benchmarks.llama_bench [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from benchmarks._table import print_table
from oblix import ModelType, OblixClient
from oblix_core.models.backend import ChatMessage
from oblix_llamacpp.packaged import packaged_model_path
from oblix_llamacpp.prompts import vicuna
from tests.servers import LlamaServer

PROMPT = "Count from 1 to 100, separated by commas."  # greedy: runs the full 128 tokens
NEW_TOKENS = 128


def raw_run(llm: Any) -> tuple[float, float, int]:
    prompt, stops = vicuna([ChatMessage("user", PROMPT)])
    llm.reset()  # no prompt cache across runs, as for a new conversation
    started = time.perf_counter()
    first = None
    count = 0
    for part in llm.create_completion(
        prompt, max_tokens=NEW_TOKENS, temperature=0.0, stop=stops, stream=True
    ):
        if part["choices"][0]["text"]:
            first = first or time.perf_counter()
            count += 1
    return first - started, time.perf_counter() - first, count


async def oblix_run(client: OblixClient, model: str, reset: Any = None) -> tuple[float, float, int]:
    """One request in a fresh (empty) session, created before the clock starts."""
    session_id = await client.create_session()
    if reset:
        reset()
    started = time.perf_counter()
    first = None
    count = 0
    stream = client.stream(PROMPT, max_tokens=NEW_TOKENS, temperature=0.0, model=model, session_id=session_id)
    async for _ in stream:  # one chunk per token on both backends
        first = first or time.perf_counter()
        count += 1
    return first - started, time.perf_counter() - first, count


def summarize(name: str, runs: list[tuple[float, float, int]], base: tuple[float, float] | None) -> tuple:
    ttft = statistics.median(r[0] for r in runs) * 1000
    tps = statistics.median(r[2] / r[1] for r in runs if r[1] > 0)
    tokens = statistics.median(r[2] for r in runs)
    if base is None:
        return (name, tokens, ttft, tps, "1.000", "+0.00")
    return (name, tokens, ttft, tps, f"{tps / base[1]:.3f}", f"{ttft - base[0]:+.2f}")


async def main_async(rounds: int, threads: int) -> None:
    path = packaged_model_path()
    with tempfile.TemporaryDirectory() as home:
        client = OblixClient(home=home)
        backend = client.build_backend(ModelType.LLAMA_CPP, "gemma-3-270m", n_ctx=2048, n_threads=threads)
        model_id = await client.hook_backend(backend)
        # raw calls go to the very same llama_cpp.Llama instance the backend loaded
        llm = client.models[0]._llama  # type: ignore[attr-defined]
        server = LlamaServer(path, threads=threads).start()
        try:
            await client.hook_model(ModelType.OPENAI, "gemma", endpoint=server.url)
            raw, ours, served = [], [], []
            # raw runs in one persistent thread too, as Oblix's generations do (llama.cpp's
            # OpenMP team belongs to the thread that calls it)
            raw_thread = ThreadPoolExecutor(max_workers=1)
            paths = [
                (raw, lambda: anyio.to_thread.run_sync(lambda: raw_thread.submit(raw_run, llm).result())),
                (ours, lambda: oblix_run(client, model_id, llm.reset)),
                (served, lambda: oblix_run(client, "openai:gemma")),
            ]
            # interleaved rounds, rotating which path goes first (this machine drifts by
            # +-10 % over a minute); the first round warms up and is dropped
            for round_ in range(rounds + 1):
                for i in range(len(paths)):
                    results, run = paths[(round_ + i) % len(paths)]
                    results.append(await run())
        finally:
            server.kill()
            await client.shutdown()
            raw_thread.shutdown()
    base_rows = summarize("raw llama_cpp.Llama", raw[1:], None)
    base = (base_rows[2], base_rows[3])
    rows = [
        base_rows,
        summarize("Oblix (llama.cpp in-process)", ours[1:], base),
        summarize("Oblix -> llama.cpp HTTP server", served[1:], base),
    ]
    print_table(
        f"Gemma 3 270M Q4_K_M, greedy, <= {NEW_TOKENS} new tokens, {threads} threads, "
        f"median of {rounds} rounds",
        ["path", "tokens", "TTFT ms", "tokens/s", "tok/s ratio", "TTFT added ms"],
        rows,
    )


def main() -> None:
    import psutil

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    args = parser.parse_args()
    anyio.run(main_async, args.rounds, args.threads)


if __name__ == "__main__":
    main()
