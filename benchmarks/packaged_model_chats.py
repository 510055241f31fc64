"""The packaged model (Gemma 3 270M, a base model) in four short chats: how often it echoes.

A turn *echoes* when the answer only repeats the user's message (is it, or starts with it,
word for word; :func:`oblix_llamacpp.prompts.echoes`), the third rule of
``benchmarks/packaged_model_prompts.py``'s *sensible*. In a chat an echo compounds: the
exchange goes back into the prompt as one more worked example, and the next statement is
echoed too ("I like pasta." -> "I like pasta.", "Thanks!" -> "Thanks!").

"Before" is the few-shot prompt of issue 33's first round (six question examples, every
earlier exchange kept); "after" is today's (a greeting and a thanks among the examples,
earlier exchanges that echoed left out of the prompt). Greedy decoding (temperature 0), so
a rerun gives the same answers on the same build; each answer goes back into its chat's
history, as ``oblix chat`` does.

Run: ``.venv/bin/python -m benchmarks.packaged_model_chats [--out benchmarks/packaged_model_chats.md]``
(about a minute per setup on 2 cores).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import anyio

from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_llamacpp import LlamaCppBackend, prompts
from oblix_llamacpp.loops import find_loop

CHATS: list[list[str]] = [
    [
        "Hi, my name is Ana.",
        "What is the capital of France?",
        "And of Italy?",
        "What did I say my name was?",
        "Write a poem about the sea.",
        "Thanks!",
    ],
    ["Hello!", "Can you help me plan dinner?", "I like pasta.", "What should I cook?", "Great, thanks."],
    ["What is the largest planet?", "How big is it?", "Is it bigger than the Sun?", "OK. What about Mars?"],
    ["I'm learning French.", "How do you say cat in French?", "And dog?", "Merci!"],
]

#: The first round's examples: the six questions, before the greeting and the thanks.
FIRST_ROUND_EXAMPLES = prompts.FEWSHOT_EXAMPLES[:6]


def first_round(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    """The first round's few-shot prompt: its six examples, every earlier exchange kept."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    parts = [f"{prompts.FEWSHOT_INTRO} {system}".strip()]
    parts += [f"Question: {q}\nAnswer: {a}" for q, a in FIRST_ROUND_EXAMPLES]
    for m in messages:
        if m.role == "user":
            parts.append(f"Question: {prompts._one_block(m.content)}")
        elif m.role == "assistant":
            parts[-1] += f"\nAnswer: {prompts._one_block(m.content)}"
    parts[-1] += "\nAnswer:"
    return "\n\n".join(parts), ["\nQuestion:", "Question:", "\nAnswer:", "\n\n"]


first_round.__name__ = "fewshot"  # the same sampling defaults (FORMAT_DEFAULTS) as today's
prompts.PLAIN_FORMATS["fewshot-first-round"] = first_round


async def chats(chat_format: str) -> list[list[tuple[str, str]]]:
    """Each chat's (message, answer) turns, every answer kept in its chat's history."""
    backend = LlamaCppBackend("gemma-3-270m", n_ctx=4096, chat_format=chat_format)
    await backend.start()
    found = []
    try:
        for chat in CHATS:
            history: list[ChatMessage] = []
            turns = []
            for message in chat:
                history.append(ChatMessage("user", message))
                request = GenerationRequest(tuple(history), temperature=0.0)
                answer = "".join([c.text async for c in backend.stream(request)])
                history.append(ChatMessage("assistant", answer))
                turns.append((message, answer))
            found.append(turns)
    finally:
        await backend.aclose()
    return found


def table(before: list[list[tuple[str, str]]], after: list[list[tuple[str, str]]]) -> str:
    lines = ["| chat | message | before | after |", "|---|---|---|---|"]
    echoed = [0, 0]
    loops = [0, 0]
    for n, (old, new) in enumerate(zip(before, after, strict=True), 1):
        for (message, a), (_, b) in zip(old, new, strict=True):
            cells = []
            for side, answer in enumerate((a, b)):
                echo = prompts.echoes(message, answer)
                echoed[side] += echo
                loops[side] += find_loop(answer) is not None
                cells.append(" ".join(answer.split()).replace("|", "\\|") + (" **(echo)**" if echo else ""))
            lines.append(f"| {n} | {message} | {cells[0]} | {cells[1]} |")
    total = sum(len(c) for c in CHATS)
    lines += [
        "",
        f"Echoed turns: before {echoed[0]}/{total}, after {echoed[1]}/{total}. Looping answers: "
        f"before {loops[0]}, after {loops[1]} (load average {os.getloadavg()[0]:.2f}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("packaged_model_chats.md"))
    args = parser.parse_args()
    before = anyio.run(chats, "fewshot-first-round")
    after = anyio.run(chats, "fewshot")
    text = table(before, after)
    print(text)
    header = (
        "# The packaged model in four chats: answers that only repeat the message, before and after\n\n"
        "Written by `benchmarks/packaged_model_chats.py` (its docstring states the rule for an "
        "*echo*); greedy decoding, so a rerun gives the same answers on the same build.\n\n"
    )
    args.out.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
