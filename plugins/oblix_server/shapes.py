"""OpenAI's response shapes: a chat completion, its stream chunks, usage, and SSE framing."""

from __future__ import annotations

import json
from typing import Any

#: Finish reasons OpenAI clients know; any other (e.g. "cancelled") is reported as "stop".
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


def completion_id(request_id: str) -> str:
    """``chatcmpl-<hex>`` from the Oblix request id (``req_<hex>``), so logs can be joined."""
    return "chatcmpl-" + request_id.removeprefix("req_")


def finish_reason(metrics: dict[str, Any]) -> str:
    reason = metrics.get("finish_reason")
    return reason if reason in FINISH_REASONS else "stop"


def usage(metrics: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` from the core's metrics; ``oblix_estimated`` says if tokens were estimated.

    Counts come from the backend when it reports them (llama.cpp's tokenizer, OpenAI's
    ``usage``); otherwise the core estimates them and ``oblix_estimated`` is true.
    """
    prompt = int(metrics.get("input_tokens") or 0)
    completion = int(metrics.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "oblix_estimated": bool(metrics.get("tokens_estimated")),
    }


def completion(cid: str, created: int, result: dict[str, Any]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion from the core's result dict."""
    metrics = result["metrics"]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": result["model_id"],
        "choices": [
            {
                "index": 0,
                "message": message(result),
                "finish_reason": finish_reason(metrics),
                "logprobs": None,
            }
        ],
        "usage": usage(metrics),
        "oblix": {
            "request_id": result["request_id"],
            "route": result["routing_decision"].get("rule"),
            "routing_reason": result["routing_decision"].get("reason"),
            **({"sources": result["sources"]} if "sources" in result else {}),  # documents: chunks used
        },
    }


def message(result: dict[str, Any]) -> dict[str, Any]:
    """The assistant message of a result: its text, or ``null`` content and the tool calls."""
    if result.get("tool_calls"):
        return {
            "role": "assistant",
            "content": result["response"] or None,
            "tool_calls": result["tool_calls"],
        }
    return {"role": "assistant", "content": result["response"]}


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole tool calls as the ``delta.tool_calls`` of one stream chunk (each with its index)."""
    return [{"index": i, **call} for i, call in enumerate(calls)]


def chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` gives the usage chunk (no choices)."""
    data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None:
        data["choices"] = []
        data["usage"] = usage_data
    else:
        data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return data


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (a dict as JSON, or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
