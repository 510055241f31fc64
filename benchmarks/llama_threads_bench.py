"""llama.cpp thread count: prompt evaluation and generation speed, idle and under load.

The packaged Gemma 3 270M, raw ``llama_cpp.Llama`` (one instance per thread count, each
called from one persistent thread as the backend does); ``auto`` is the backend's
adaptive count: the same :class:`ThreadChooser` picks the count before each round and
``llama_set_n_threads`` applies it, as ``LlamaCppBackend`` does per request. Printed
after the table: adaptive against the best fixed count and today's default
(``default_threads()``, physical cores - 1), per load level, and the load average.
For each load level (no other CPU work, then 1 and 2 competing processes) and each
``n_threads`` it times a
~600-token prompt evaluation and 64 greedy new tokens, interleaving the thread counts
round by round; medians, with the spread (min-max) of generation speed because that is
where oversubscription shows. ``--kind llama`` makes the competitors llama.cpp processes
generating on every core (another Oblix process, a test run) instead of Python loops.

Run: ``.venv/bin/python -m benchmarks.llama_threads_bench [--rounds 5] [--threads 1,2,auto]
[--burners 0,1,2] [--kind cpu|llama]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from benchmarks._table import print_table
from oblix_llamacpp.options import default_threads
from oblix_llamacpp.packaged import packaged_model_path
from oblix_llamacpp.threads import ThreadChooser, batch_threads, physical_cores

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


def thread_label(mode: str) -> str:
    return f"auto ({physical_cores()} cores)" if mode == "auto" else mode


def make_model(llama_cpp: Any, path: str, mode: str) -> tuple[Any, ThreadChooser | None]:
    """A raw ``Llama`` for a fixed count, or, for ``auto``, one with the backend's chooser."""
    if mode != "auto":
        return llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=int(mode), verbose=False), None
    cores = physical_cores()
    llm = llama_cpp.Llama(
        model_path=path, n_ctx=2048, n_threads=cores, n_threads_batch=batch_threads(), verbose=False
    )
    chooser = ThreadChooser(cores)
    chooser.start()
    return llm, chooser


def adaptive_round(llm: Any, chooser: ThreadChooser, tokens: list[int], state: dict[str, int]) -> Any:
    """One round as the backend runs a request: choose the count, set it if it changed, generate."""
    wanted = chooser.choose()
    if wanted != state.get("n"):
        llm._ctx.set_n_threads(wanted, batch_threads())
        state["n"] = wanted
    state[f"chose {wanted}"] = state.get(f"chose {wanted}", 0) + 1
    return one_round(llm, tokens)


def measure(modes: list[str], rounds: int, burners: int, kind: str) -> list[tuple[Any, ...]]:
    import llama_cpp

    path = str(packaged_model_path())
    target = path if kind == "llama" else None
    children = [multiprocessing.Process(target=burn, args=(target,), daemon=True) for _ in range(burners)]
    for child in children:
        child.start()
    models = {m: make_model(llama_cpp, path, m) for m in modes}
    pools = {m: ThreadPoolExecutor(max_workers=1) for m in modes}
    tokens = models[modes[0]][0].tokenize(PROMPT.encode(), add_bos=True)
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    state: dict[str, int] = {}
    load_before = os.getloadavg()[0]
    try:
        for round_ in range(rounds + 1):  # the first round warms up and is dropped
            order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
            for m in order:
                llm, chooser = models[m]
                if chooser is None:
                    sample = pools[m].submit(one_round, llm, tokens).result()
                else:
                    sample = pools[m].submit(adaptive_round, llm, chooser, tokens, state).result()
                if round_:
                    results[m].append(sample)
    finally:
        for child in children:
            child.kill()
        for pool in pools.values():
            pool.shutdown()
        for llm, chooser in models.values():
            if chooser is not None:
                chooser.stop()
            llm.close()
    load = f"{load_before:.2f}-{os.getloadavg()[0]:.2f}"
    chosen = ", ".join(f"{k} x{v}" for k, v in sorted(state.items()) if k.startswith("chose"))
    rows = []
    for m in modes:
        prompt_rates = [r[0] for r in results[m]]
        gen_rates = [r[1] for r in results[m]]
        rows.append(
            (
                f"{burners} {kind}" if burners else "none",
                thread_label(m) + (f" [{chosen}]" if m == "auto" else ""),
                load,
                statistics.median(prompt_rates),
                statistics.median(gen_rates),
                f"{min(gen_rates):.1f}-{max(gen_rates):.1f}",
            )
        )
    return rows


def ratios(rows: list[tuple[Any, ...]]) -> list[str]:
    """Adaptive against the best fixed count and against today's default, per load level."""
    lines = []
    today = str(default_threads())
    for level in dict.fromkeys(r[0] for r in rows):
        group = [r for r in rows if r[0] == level]
        auto = [r for r in group if r[1].startswith("auto")]
        fixed = [r for r in group if not r[1].startswith("auto")]
        if not auto or not fixed:
            continue
        best = max(fixed, key=lambda r: r[4])
        line = f"{level}: auto / best fixed ({best[1]}) = {auto[0][4] / best[4]:.3f} (gen)"
        default = [r for r in fixed if r[1] == today]
        if default:
            line += f", auto / today's default ({today}) = {auto[0][4] / default[0][4]:.3f} (gen)"
            line += f", prompt {auto[0][3] / default[0][3]:.3f}"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2,auto", help="fixed counts and/or auto (adaptive)")
    parser.add_argument("--burners", default="0,1,2", help="competing processes per measurement")
    parser.add_argument(
        "--kind",
        default="cpu",
        choices=["cpu", "llama"],
        help="a Python busy loop, or llama.cpp on every core",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.threads.split(",")]
    rows = []
    for burners in (int(b) for b in args.burners.split(",")):
        rows += measure(modes, args.rounds, burners, args.kind)
    print_table(
        f"Gemma 3 270M Q4_K_M, {physical_cores()} physical cores, ~600-token prompt "
        f"+ {NEW_TOKENS} new tokens, median of {args.rounds} rounds",
        ["competing", "n_threads", "load avg (1 min)", "prompt tok/s", "gen tok/s", "gen tok/s range"],
        rows,
    )
    for line in ratios(rows):
        print(line)


if __name__ == "__main__":
    main()
