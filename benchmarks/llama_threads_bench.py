"""llama.cpp thread count: prompt evaluation and generation speed, idle and under load.

The packaged Gemma 3 270M, raw ``llama_cpp.Llama`` (one instance per thread count, each
called from one persistent thread as the backend does). For each load level (no other
CPU work, then 1 and 2 competing processes) and each ``n_threads`` it times a
~600-token prompt evaluation and 64 greedy new tokens, interleaving the thread counts
round by round; medians, with the spread (min-max) of generation speed because that is
where oversubscription shows. ``--kind llama`` makes the competitors llama.cpp processes
generating on every core (another Oblix process, a test run) instead of Python loops.

Run: ``.venv/bin/python -m benchmarks.llama_threads_bench [--rounds 5] [--threads 1,2]
[--burners 0,1,2] [--kind cpu|llama]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from benchmarks._table import print_table
from oblix_llamacpp.packaged import packaged_model_path

PROMPT = " ".join(
    f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7 % 31} coins." for i in range(45)
)
NEW_TOKENS = 64


def burn(path: str | None) -> None:  # pragma: no cover - runs in a child process
    """Keep a core busy: a Python loop, or (``path``) llama.cpp generating on every core."""
    if path is None:
        while True:
            pass
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path, n_ctx=512, n_threads=psutil.cpu_count(logical=False), verbose=False
    )
    tokens = llm.tokenize(b"Count from one to one thousand:", add_bos=True)
    while True:
        llm.reset()
        for count, _ in enumerate(llm.generate(tokens, temp=0.0)):
            if count == 200:
                break


def one_round(llm: Any, tokens: list[int]) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) for one fresh evaluation + generation."""
    llm.reset()
    started = time.perf_counter()
    llm.eval(tokens)
    evaluated = time.perf_counter()
    count = 0
    for _ in llm.generate(tokens, temp=0.0):  # prompt already evaluated: samples at once
        count += 1
        if count == NEW_TOKENS:
            break
    ended = time.perf_counter()
    return len(tokens) / (evaluated - started), count / (ended - evaluated)


def measure(thread_counts: list[int], rounds: int, burners: int, kind: str) -> list[tuple[Any, ...]]:
    import llama_cpp

    path = str(packaged_model_path())
    target = path if kind == "llama" else None
    children = [multiprocessing.Process(target=burn, args=(target,), daemon=True) for _ in range(burners)]
    for child in children:
        child.start()
    models = {
        n: llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=n, verbose=False) for n in thread_counts
    }
    pools = {n: ThreadPoolExecutor(max_workers=1) for n in thread_counts}
    tokens = models[thread_counts[0]].tokenize(PROMPT.encode(), add_bos=True)
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in thread_counts}
    try:
        for round_ in range(rounds + 1):  # the first round warms up and is dropped
            order = (
                thread_counts[round_ % len(thread_counts) :] + thread_counts[: round_ % len(thread_counts)]
            )
            for n in order:
                sample = pools[n].submit(one_round, models[n], tokens).result()
                if round_:
                    results[n].append(sample)
    finally:
        for child in children:
            child.kill()
        for pool in pools.values():
            pool.shutdown()
        for llm in models.values():
            llm.close()
    rows = []
    for n in thread_counts:
        prompt_rates = [r[0] for r in results[n]]
        gen_rates = [r[1] for r in results[n]]
        rows.append(
            (
                f"{burners} {kind}" if burners else "none",
                n,
                len(tokens),
                statistics.median(prompt_rates),
                statistics.median(gen_rates),
                f"{min(gen_rates):.1f}-{max(gen_rates):.1f}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--burners", default="0,1,2", help="competing processes per measurement")
    parser.add_argument(
        "--kind",
        default="cpu",
        choices=["cpu", "llama"],
        help="a Python busy loop, or llama.cpp on every core",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    rows = []
    for burners in (int(b) for b in args.burners.split(",")):
        rows += measure(counts, args.rounds, burners, args.kind)
    print_table(
        f"Gemma 3 270M Q4_K_M, {psutil.cpu_count(logical=False)} physical cores, "
        f"median of {args.rounds} rounds",
        ["competing", "n_threads", "prompt tokens", "prompt tok/s", "gen tok/s", "gen tok/s range"],
        rows,
    )


if __name__ == "__main__":
    main()
