"""The body of ``POST /v1/chat/completions``: parsed and checked into :class:`ChatRequest`.

Malformed JSON, missing fields and wrong types are 400 errors; well-typed values that
Oblix cannot honour (out of range, ``n > 1``, a conversation not ending with a user
message) are 422. Unknown top-level fields are ignored, as OpenAI's own clients send
fields that vary between versions; fields that would change the answer's shape and that
Oblix cannot honour are refused instead of silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from oblix.plugin import ChatMessage
from oblix_server.documents_api import workspace_field
from oblix_server.errors import APIError
from oblix_server.settings import DEFAULT_MESSAGE_LIMIT

#: The longest answer a request may ask for (the core's own limit too).
MAX_ANSWER_TOKENS = 10_000_000

#: Roles accepted in ``messages`` (``developer`` is OpenAI's newer name for ``system``;
#: ``tool`` carries a tool's result, for models that call tools).
ROLES = ("system", "developer", "user", "assistant", "tool")


@attrs.frozen
class ChatRequest:
    """A checked chat completion request."""

    model: str
    messages: tuple[ChatMessage, ...]  # developer folded into system
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str | None = None
    top_p: float | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    #: ``oblix_workspace``: the documents the answer draws on (:mod:`oblix_server.documents_api`).
    workspace: str | tuple[str, ...] | None = None

    def model_options(self) -> dict[str, Any]:
        """Per-request options for the model (``stop``, ``seed``, ``top_p``, ``tools``)."""
        options: dict[str, Any] = {}
        if self.tools:
            options["tools"] = [dict(t) for t in self.tools]
            if self.tool_choice is not None:
                options["tool_choice"] = self.tool_choice
        if self.stop:
            options["stop"] = list(self.stop)
        if self.seed is not None:
            options["seed"] = self.seed
        if self.top_p is not None:
            options["top_p"] = self.top_p
        return options


def _bad(message: str, param: str | None = None, status: int = 400) -> APIError:
    return APIError(status, message, code="invalid_value" if status == 422 else "invalid_type", param=param)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{name}' must be a number, got {type(value).__name__}.", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}.", name, 422)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {type(value).__name__}.", name)
    if low is not None and value < low:
        raise _bad(f"'{name}' must be at least {low}, got {value}.", name, 422)
    if not -(2**63) <= value < 2**63:
        raise _bad(f"'{name}' is too large.", name, 422)
    return value


def _content(message: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    param = f"messages[{i}].content"
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or a list of text parts.", param)
    texts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"Each part of '{param}' must be an object with a 'type'.", param)
        if part["type"] != "text":
            raise _bad(
                f"'{param}' has a {part['type']!r} part; Oblix serves text only (type 'text').", param, 422
            )
        if not isinstance(part.get("text"), str):
            raise _bad(f"A text part of '{param}' needs a string 'text'.", param)
        texts.append(part["text"])
    return "".join(texts)


def _message(message: dict[str, Any], i: int, role: str) -> ChatMessage:
    """One checked message; tool calls on assistant messages and tool results kept as given."""
    calls = message.get("tool_calls") if role == "assistant" else None
    if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
        raise _bad(f"'messages[{i}].tool_calls' must be a list of tool calls.", f"messages[{i}].tool_calls")
    call_id = message.get("tool_call_id") if role == "tool" else None
    if role == "tool" and not isinstance(call_id, str):
        raise _bad(f"'messages[{i}]' is a tool result: it needs a string 'tool_call_id'.", f"messages[{i}]")
    role = "system" if role == "developer" else role
    return ChatMessage(role, _content(message, i), tuple(calls) if calls else None, call_id)


def _messages(raw: Any, most: int) -> tuple[ChatMessage, ...]:
    if raw is None:
        raise _bad("'messages' is required: a list of {'role': ..., 'content': ...} objects.", "messages")
    if not isinstance(raw, list):
        raise _bad(f"'messages' must be a list, got {type(raw).__name__}.", "messages")
    if not raw:
        raise _bad("'messages' is empty; send at least one user message.", "messages", 422)
    if len(raw) > most:
        raise APIError(
            413,
            f"'messages' has {len(raw):,} messages; this server takes at most {most:,} per request "
            "(--max-messages). Send a shorter conversation, or keep it in a session (X-Oblix-Session-Id).",
            code="too_many_messages",
            param="messages",
        )
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _bad(f"'messages[{i}]' must be an object.", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str):
            raise _bad(f"'messages[{i}].role' is required and must be a string.", f"messages[{i}].role")
        if role not in ROLES:
            raise _bad(
                f"'messages[{i}].role' is {role!r}; Oblix accepts {', '.join(ROLES)}.",
                f"messages[{i}].role",
                422,
            )
        messages.append(_message(message, i, role))
    if messages[-1].role != "user":
        raise _bad(
            "The last message must be the user's (role 'user'): it is what gets answered.", "messages", 422
        )
    return tuple(messages)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or a list of strings.", "stop")
    if len(stops) > 4:
        raise _bad("'stop' takes at most 4 sequences.", "stop", 422)
    return tuple(s for s in stops if s)


def _tools(body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    if body.get("functions"):
        raise _bad("'functions' is deprecated; send 'tools' instead.", "functions", 422)
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in raw
    ):
        raise _bad(
            "'tools' must be a list of {'type': 'function', 'function': {'name': ...}} objects.", "tools"
        )
    return tuple(raw)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields that would change the answer's shape and that Oblix cannot honour."""
    if body.get("n") not in (None, 1):
        raise _bad("Oblix answers with one choice: 'n' must be 1.", "n", 422)
    if body.get("logprobs"):
        raise _bad("Oblix does not return log probabilities: 'logprobs' must be false.", "logprobs", 422)
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise _bad(
            "Oblix returns text: 'response_format' must be {'type': 'text'} or absent.",
            "response_format",
            422,
        )


def _stream_fields(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object.", "stream_options")
    if not stream:
        raise _bad("'stream_options' is only allowed with 'stream': true.", "stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise _bad("'stream_options.include_usage' must be a boolean.", "stream_options.include_usage")
    return stream, usage


def parse_chat_request(raw: bytes, max_messages: int = DEFAULT_MESSAGE_LIMIT) -> ChatRequest:
    """Parse and check a request body; raises :class:`APIError` (400 or 422; 413 beyond
    ``max_messages`` messages)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:  # bad UTF-8, bad JSON, integers too long to convert
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _bad("'model' is required: 'auto' (Oblix routes) or a model id from GET /v1/models.", "model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string.", "model")
    _refuse_unsupported(body)
    stream, include_usage = _stream_fields(body)
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is not None and max_tokens > MAX_ANSWER_TOKENS:
        raise _bad(f"'max_tokens' may be at most {MAX_ANSWER_TOKENS:,}.", "max_tokens", 422)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string.", "user")
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise _bad("'tool_choice' needs 'tools'.", "tool_choice", 422)
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages"), max_messages),
        stream=stream,
        include_usage=include_usage,
        temperature=_number(body, "temperature", 0.0, 2.0),
        max_tokens=max_tokens,
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed"),
        user=user,
        top_p=_number(body, "top_p", 0.0, 1.0),
        tools=_tools(body),
        tool_choice=body.get("tool_choice"),
        workspace=workspace_field(body),
    )
