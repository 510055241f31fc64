"""Plain-text prompt formats for models without a chat template (base models).

Measured on the packaged Gemma 3 270M base model: llama.cpp's fallback chat format
(llama-2) and ``chatml`` make it answer with nothing, while a Vicuna-style transcript
gives sensible answers that end by themselves; Alpaca-style works with a stop on ``###``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from oblix.plugin import ChatMessage
from oblix_llamacpp.loops import normalize

VICUNA_SYSTEM = "A chat between a curious user and an artificial intelligence assistant."
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


def vicuna(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    """``USER: ... / ASSISTANT: ...`` transcript and its stop sequences."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    lines = [f"{VICUNA_SYSTEM} {system}".strip(), ""]
    for m in messages:
        if m.role == "user":
            lines.append(f"USER: {m.content}")
        elif m.role == "assistant":
            lines.append(f"ASSISTANT: {m.content}")
    lines.append("ASSISTANT:")
    return "\n".join(lines), ["\nUSER:", "USER:", "\nASSISTANT:", "\n###"]


def alpaca(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    """``### Instruction: / ### Response:`` blocks and their stop sequences."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    parts = [f"{ALPACA_SYSTEM} {system}".strip()]
    for m in messages:
        if m.role == "user":
            parts.append(f"### Instruction:\n{m.content}")
        elif m.role == "assistant":
            parts.append(f"### Response:\n{m.content}")
    parts.append("### Response:\n")
    return "\n\n".join(parts), ["###", "\nUSER:"]


PLAIN_FORMATS: dict[str, Callable[[Sequence[ChatMessage]], tuple[str, list[str]]]] = {
    "vicuna": vicuna,
    "alpaca": alpaca,
}


# Completion-style framing for small base models: a few solved examples, then the question.
# Measured on the packaged Gemma 3 270M (benchmarks/packaged_model_prompts.md): the chat
# transcript made it answer with the question's words or loop; worked examples of short,
# complete answers make it answer in kind. The examples cover kinds of task (a fact, a
# count, a summary, an explanation, a translation, an attribution, a greeting, thanks);
# none of them is among the benchmark's prompts.
FEWSHOT_INTRO = "Questions and answers. Each answer is short, correct and complete."
FEWSHOT_EXAMPLES = (
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    (
        "Summarise this: The library will close early on Friday for staff training and will "
        "open as usual on Saturday.",
        "The library closes early on Friday for training and opens normally on Saturday.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "In autumn trees stop making chlorophyll, the green pigment, so the yellow and orange "
        "pigments in the leaves show through.",
    ),
    ('Translate "good morning" into Spanish.', '"Good morning" in Spanish is "buenos días".'),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    # Statements, not questions, answered as a reply: without them the model repeats a
    # greeting or a "thanks" word for word (10 of 19 chat turns in
    # benchmarks/packaged_model_chats.md; 3 with them and echoes left out of the history).
    # The reply names no one: with "Hello Sam, nice to meet you" the model answered a bare
    # "hi" with "Hi, I'm Sam.".
    ("Hi, I'm Sam.", "Welcome! What would you like to know?"),
    ("Thanks for your help!", "You're welcome."),
)


def _one_block(text: str) -> str:
    """``text`` without blank lines: a blank line separates the examples (and stops the answer)."""
    return "\n".join(line for line in text.strip().splitlines() if line.strip())


def echoes(question: str, answer: str) -> bool:
    """Whether ``answer`` only repeats ``question`` (is it, or starts with it, word for word),
    or is empty."""
    asked, said = normalize(question), normalize(answer)
    return not said or said == asked or said.startswith(asked)


def without_echoes(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` less the earlier exchanges whose answer only repeated the question: as
    examples they teach a small model to echo, and each echo makes the next likelier."""
    kept: list[ChatMessage] = []
    for m in messages:
        if m.role == "assistant" and kept and kept[-1].role == "user" and echoes(kept[-1].content, m.content):
            kept.pop()
            continue
        kept.append(m)
    return kept


def fewshot(messages: Sequence[ChatMessage]) -> tuple[str, list[str]]:
    """``Question: / Answer:`` pairs after worked examples, and their stop sequences.

    System messages become the first line; earlier turns follow the examples as pairs,
    except those whose answer only repeated the question (:func:`without_echoes`).
    """
    system = "\n".join(m.content for m in messages if m.role == "system")
    parts = [f"{FEWSHOT_INTRO} {system}".strip()]
    parts += [f"Question: {q}\nAnswer: {a}" for q, a in FEWSHOT_EXAMPLES]
    for m in without_echoes(messages):
        if m.role == "user":
            parts.append(f"Question: {_one_block(m.content)}")
        elif m.role == "assistant":
            parts[-1] += f"\nAnswer: {_one_block(m.content)}"
    if messages and messages[-1].role == "user":
        parts[-1] += "\nAnswer:"
    else:
        parts.append("Answer:")
    return "\n\n".join(parts), ["\nQuestion:", "Question:", "\nAnswer:", "\n\n"]


PLAIN_FORMATS["fewshot"] = fewshot

#: The plain format for a base model (no chat template) of a llama.cpp architecture
#: (GGUF ``general.architecture``); others get ``"vicuna"``.
FAMILY_FORMATS = {"gemma3": "fewshot"}

#: Sampling defaults per plain format, used where a request sets none: the base-model
#: format's repetition penalties (llama.cpp's) and its shorter answers. Tuned on the
#: packaged Gemma 3 270M with benchmarks/packaged_model_prompts.py.
FORMAT_DEFAULTS: dict[str, dict[str, float | int]] = {
    "fewshot": {"repeat_penalty": 1.15, "frequency_penalty": 0.2, "max_tokens": 160},
}
