"""Oblix's conversation, tools and stop reasons in the shapes of Anthropic's Messages API.

Pure functions and one small stream reader, without the ``anthropic`` package, so that
the mapping is testable on its own:

* :func:`conversation`: system messages (the system prompt and the session context)
  become the top-level ``system``; the rest strictly alternates ``user``/``assistant``
  (consecutive same-role messages are joined; a conversation that starts with the
  assistant gets a short user turn first); OpenAI-shaped ``tool_calls`` become
  ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks;
* :func:`mark_cache`: ``cache_control`` breakpoints on the stable prefix (the end of the
  system text and the end of the history before the new prompt);
* :func:`tools` / :func:`tool_choice`: OpenAI-shaped tool definitions in Claude's shape;
* :class:`EventReader`: the Messages API's stream events as Oblix stream chunks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from oblix.plugin import ChatMessage, PermanentModelError, StreamChunk, Usage, token_count, usage_info

#: Claude's stop reasons as the finish reasons Oblix (and OpenAI) use.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: The user turn put before a conversation that starts with the assistant (trimmed history).
OPENING = "(The earlier part of this conversation was left out.)"
CACHE_MARK = {"type": "ephemeral"}

Block = dict[str, Any]
Turn = dict[str, Any]


def conversation(messages: Sequence[ChatMessage]) -> tuple[list[Block], list[Turn]]:
    """``(system blocks, alternating turns)`` for ``messages``."""
    system = [_text(m.content) for m in messages if m.role == "system" and m.content]
    turns: list[Turn] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue  # an empty assistant turn (e.g. an interrupted answer): nothing to send
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # tool results must open the user turn that answers the tool calls
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [_text(OPENING)]})
    return system, turns


def _text(text: str) -> Block:
    return {"type": "text", "text": text}


def _blocks(message: ChatMessage) -> list[Block]:
    """The content blocks of one Oblix message (empty texts left out: the API refuses them)."""
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
    blocks = [_text(message.content)] if message.content.strip() else []
    for call in message.tool_calls or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments")),
            }
        )
    return blocks


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments (OpenAI sends a JSON string) as the object Claude expects."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        raise PermanentModelError(f"A tool call's arguments are not JSON: {str(raw)[:80]!r}.") from None
    return value if isinstance(value, dict) else {"value": value}


def mark_cache(system: list[Block], turns: list[Turn]) -> int:
    """Mark the stable prefix for Anthropic's prompt cache; returns the breakpoints set.

    The end of the system text and the last block before the final user turn (the
    history a resumed conversation sends again) get ``cache_control``; the new prompt
    does not, since it changes every time.
    """
    marks = 0
    if system:
        system[-1]["cache_control"] = dict(CACHE_MARK)
        marks += 1
    if len(turns) >= 2:
        turns[-2]["content"][-1]["cache_control"] = dict(CACHE_MARK)
        marks += 1
    return marks


def tools(definitions: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped tools (``{"type": "function", "function": {...}}``) in Claude's shape."""
    if not isinstance(definitions, list):
        raise PermanentModelError("tools must be a list of tool definitions.")
    converted = []
    for tool in definitions:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise PermanentModelError(f"A tool definition needs a function name, got {tool!r:.80}.")
        entry = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
        if function.get("description"):
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def tool_choice(choice: Any) -> dict[str, Any]:
    """OpenAI's ``tool_choice`` (``auto``, ``none``, ``required`` or one function) for Claude."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"type": "tool", "name": name}
    named = {"auto": "auto", "none": "none", "required": "any", "any": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    raise PermanentModelError(f"tool_choice {choice!r} is not auto, none, required or a function.")


class EventReader:
    """Turns the Messages API's stream events into :class:`StreamChunk` objects.

    Text deltas become text; ``tool_use`` blocks become tool-call deltas in OpenAI's
    streaming shape; ``message_stop`` (the positive end of the stream) yields the last
    chunk with the finish reason, the usage and the prompt-cache counts. A stream that
    ends without ``message_stop`` yields no finish reason, so it counts as truncated.
    """

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens: int | None = None
        self.cache_read = 0
        self.cache_creation = 0
        self.stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}
        #: Counts the API reported that are not token counts (dropped, so estimated instead).
        self.invalid: list[str] = []

    def read(self, event: Any) -> list[StreamChunk]:
        """The chunks for one event (often none)."""
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self._usage(event.message.usage)
            if self.input_tokens:  # known before any text: an abandoned answer still counts it
                return [StreamChunk(usage=Usage(self._prompt(), None, self.cache_read or None))]
        elif kind == "content_block_start":
            return self._block_start(event.index, event.content_block)
        elif kind == "content_block_delta":
            return self._delta(event.index, event.delta)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self._usage(getattr(event, "usage", None))
        elif kind == "message_stop":
            return [self._last()]
        return []

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        self.input_tokens = self._count(usage, "input_tokens") or self.input_tokens
        self.output_tokens = self._count(usage, "output_tokens") or self.output_tokens
        self.cache_read = self._count(usage, "cache_read_input_tokens") or self.cache_read
        self.cache_creation = self._count(usage, "cache_creation_input_tokens") or self.cache_creation

    def _count(self, usage: Any, name: str) -> int | None:
        """A reported count, checked (:func:`oblix.plugin.token_count`); an invalid one is noted."""
        value = getattr(usage, name, None)
        count = token_count(value)
        if value is not None and count is None:
            self.invalid.append(f"{name}={value!r:.40} is not a token count")
        return count

    def _prompt(self) -> int | None:
        """Input tokens in all (cache reads and writes included), ``None`` if unknown or absurd."""
        return token_count(self.input_tokens + self.cache_read + self.cache_creation) or None

    def _block_start(self, index: int, block: Any) -> list[StreamChunk]:
        if block.type == "text":
            return [StreamChunk(block.text)] if block.text else []
        if block.type != "tool_use":
            return []  # thinking and other blocks are not part of the answer
        self._tool_index[index] = position = len(self._tool_index)
        call = {"index": position, "id": block.id, "type": "function"}
        call["function"] = {"name": block.name, "arguments": ""}
        return [StreamChunk(tool_calls=(call,))]

    def _delta(self, index: int, delta: Any) -> list[StreamChunk]:
        if delta.type == "text_delta":
            return [StreamChunk(delta.text)] if delta.text else []
        if delta.type == "input_json_delta" and index in self._tool_index and delta.partial_json:
            call = {"index": self._tool_index[index], "function": {"arguments": delta.partial_json}}
            return [StreamChunk(tool_calls=(call,))]
        return []

    def _last(self) -> StreamChunk:
        info = {
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_creation,
        } | (usage_info("; ".join(self.invalid)) or {})
        return StreamChunk(
            usage=Usage(self._prompt(), self.output_tokens, self.cache_read),
            finish_reason=STOP_REASONS.get(self.stop_reason or "", "stop"),
            info=info,
        )
