"""Resuming sessions on in-process llama.cpp: the prompt-state cache on and off.

Two sessions with ~1,200- and ~3,000-token histories take turns (A, B, A, B, ...) on one
model, greedy, 16 new tokens per answer; each answer joins its session's history. Three
paths run the same turns, each on its own ``Llama`` context, interleaved turn by turn:

* raw:   ``llama_cpp.Llama.create_completion`` (its own prefix reuse only: after the
         other session's turn, nothing of this session is left in the context);
* off:   Oblix's backend with ``kv_cache_bytes=0`` (no saved states);
* on:    Oblix's backend with the default cache.

Per turn: time to first token (TTFT), whether the answers of the three paths are
identical, and for the cache: where the prompt came from, tokens reused, restore and
save times. Then the memory the saved states take, and how much the process's
anonymous memory grew after the first turns (which touch the contexts' KV buffers).

Run: ``.venv/bin/python -m benchmarks.llama_cache_bench [--turns 4] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import psutil

from benchmarks._table import print_table
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_llamacpp import LlamaCppBackend
from oblix_llamacpp.options import default_threads
from oblix_llamacpp.prompts import vicuna

NEW_TOKENS = 16
N_CTX = 4096


def history(exchanges: int, tag: str) -> list[ChatMessage]:
    """A made-up conversation, about 59 tokens per exchange."""
    messages = []
    for i in range(exchanges):
        messages.append(
            ChatMessage("user", f"[{tag}] Question {i}: what is {i} plus {i * 3}? Tell me about {i}.")
        )
        parity = "even" if i % 2 == 0 else "odd"
        messages.append(
            ChatMessage("assistant", f"{i} plus {i * 3} is {i * 4}. {i} is {parity}, after {i - 1}.")
        )
    return messages


def anonymous_memory(process: psutil.Process) -> int:
    """Resident memory that is not file-backed (the model's mmapped weights are)."""
    info = process.memory_info()
    return int(info.rss - getattr(info, "shared", 0))


def raw_turn(llm: Any, messages: list[ChatMessage]) -> tuple[float, float, str]:
    """(TTFT s, total s, text) with the raw library, in the calling thread."""
    prompt, stops = vicuna(messages)
    started = time.perf_counter()
    first = None
    texts = []
    for part in llm.create_completion(
        prompt, max_tokens=NEW_TOKENS, temperature=0.0, stop=stops, stream=True
    ):
        text = part["choices"][0]["text"]
        if text and first is None:
            first = time.perf_counter()
        texts.append(text)
    return (first or time.perf_counter()) - started, time.perf_counter() - started, "".join(texts).strip()


async def oblix_turn(backend: LlamaCppBackend, messages: list[ChatMessage]) -> tuple[float, float, str, dict]:
    request = GenerationRequest(tuple(messages), temperature=0.0, max_tokens=NEW_TOKENS)
    started = time.perf_counter()
    first = None
    texts = []
    info: dict = {}
    async for chunk in backend.stream(request):
        if chunk.text and first is None:
            first = time.perf_counter()
        texts.append(chunk.text)
        info = (chunk.info or {}).get("prompt_cache", info)
    return (
        (first or time.perf_counter()) - started,
        time.perf_counter() - started,
        "".join(texts).strip(),
        info,
    )


async def run(turns: int, threads: int) -> None:
    process = psutil.Process()
    on = LlamaCppBackend("gemma-3-270m", n_ctx=N_CTX, n_threads=threads)
    off = LlamaCppBackend("gemma-3-270m", n_ctx=N_CTX, n_threads=threads, kv_cache_bytes=0)
    await on.start()
    await off.start()
    import llama_cpp

    raw = llama_cpp.Llama(model_path=str(on.model_path), n_ctx=N_CTX, n_threads=threads, verbose=False)
    raw_thread = ThreadPoolExecutor(max_workers=1)  # one persistent thread, as the backend's
    rss_before = 0
    sessions = {"A": history(22, "A"), "B": history(53, "B")}
    rows = []
    try:
        for turn in range(turns):
            for name in sessions:
                messages = [*sessions[name], ChatMessage("user", f"Turn {turn}: name a colour.")]
                prompt_tokens = on.count_message_tokens(messages)
                r = await anyio.to_thread.run_sync(
                    lambda m=messages: raw_thread.submit(raw_turn, raw, m).result()
                )
                o = await oblix_turn(off, messages)
                c = await oblix_turn(on, messages)
                same = r[2] == o[2] == c[2]
                rows.append((name, turn, prompt_tokens, r, o, c, same))
                sessions[name] = [*messages, ChatMessage("assistant", c[2])]
            if turn == 0:  # every context has now touched its KV buffers for both sessions
                rss_before = anonymous_memory(process)
        stats = on.describe()["prompt_cache"]
        rss_after = anonymous_memory(process)
    finally:
        await on.aclose()
        await off.aclose()
        raw.close()
        raw_thread.shutdown()
    report(rows, stats, rss_after - rss_before, threads)


def report(rows: list[tuple], stats: dict, rss_delta: int, threads: int) -> None:
    table = []
    for name, turn, tokens, r, o, c, same in rows:
        use = c[3]
        table.append(
            (
                f"{name}{turn}",
                tokens,
                r[0] * 1000,
                o[0] * 1000,
                c[0] * 1000,
                f"{c[0] / r[0]:.3f}",
                use.get("source"),
                use.get("tokens_reused"),
                use.get("restore_ms"),
                use.get("save_ms"),
                f"{use.get('save_ms', 0) / (c[1] * 1000) * 100:.2f}",
                "yes" if same else "NO",
            )
        )
    print_table(
        f"Gemma 3 270M Q4_K_M, greedy, {NEW_TOKENS} new tokens, {threads} threads, sessions interleaved",
        [
            "turn",
            "prompt tok",
            "raw TTFT ms",
            "off TTFT ms",
            "on TTFT ms",
            "on/raw",
            "cache",
            "reused",
            "restore ms",
            "save ms",
            "save % of turn",
            "same answer",
        ],
        table,
    )
    for name in ("A", "B"):
        resumed = [c[0] / r[0] for n, t, _, r, _, c, _ in rows if n == name and t > 0]
        if resumed:
            print(f"session {name}: resumed-turn TTFT on/raw median {statistics.median(resumed):.3f}")
    misses = [row[5][3]["save_ms"] / (row[5][1] * 1000) * 100 for row in rows if not row[5][3].get("hit")]
    if misses:
        print(f"cache-miss turns: saving the state took {max(misses):.2f} % of the turn at most")
    print(
        f"saved states: {stats['states']} holding {stats['bytes'] / 2**20:.1f} MiB "
        f"(budget {stats['capacity_bytes'] / 2**20:.0f} MiB); the process's anonymous memory "
        f"(RSS less file-backed pages) grew {rss_delta / 2**20:.1f} MiB after the first turns"
    )
    print(f"identical answers on every turn: {all(r[6] for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()
    anyio.run(run, args.turns, args.threads)


if __name__ == "__main__":
    main()
