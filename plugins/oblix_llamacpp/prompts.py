"""Plain-text prompt formats for models without a chat template (base models).

Measured on the packaged Gemma 3 270M base model: llama.cpp's fallback chat format
(llama-2) and ``chatml`` make it answer with nothing, while a Vicuna-style transcript
gives sensible answers that end by themselves; Alpaca-style works with a stop on ``###``.
"""

from __future__ import annotations

from collections.abc import Sequence

from oblix.plugin import ChatMessage

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


PLAIN_FORMATS = {"vicuna": vicuna, "alpaca": alpaca}
