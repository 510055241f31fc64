"""The mutable request context that middleware hooks see."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from oblix_core.models import ChatMessage


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


@attrs.define
class RequestContext:
    """One ``execute``/``stream`` call. ``messages`` is what the models will be sent."""

    prompt: str
    session_id: str
    messages: list[ChatMessage]
    request_id: str = attrs.field(factory=new_request_id)
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = attrs.field(factory=dict)
