"""The request: built once per ``execute``/``stream`` call and evolved along the path."""

from __future__ import annotations

from typing import Any

import attrs

from oblix_core.documents.retrieval import Retrieval
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_core.sessions.records import random_hex


def new_request_id() -> str:
    return f"req_{random_hex()}"


@attrs.define
class Request(GenerationRequest):
    """One ``execute``/``stream`` call: what to generate, plus who asked and how to route it.

    Built once by the client. ``session_id`` and ``messages`` (context, history, prompt)
    are set when the session is read; middleware (``oblix_request_start``) may replace
    ``messages``; each model receives ``attrs.evolve(request, messages=<trimmed>)``, or the
    request itself with its planned messages when its fit trimmed nothing. The session stores
    the user's original ``prompt``.
    """

    prompt: str = ""
    request_id: str = attrs.field(factory=new_request_id)
    #: The ledger key of this request's answer when ``request_id`` may repeat (the caller gave
    #: it, without an idempotency key): that id and a random suffix, so every answer counts.
    usage_id: str | None = None
    session_id: str | None = None
    #: A forced model id; with ``fallback`` other models may answer if it cannot.
    model: str | None = None
    fallback: bool = False
    local_only: bool = False
    local_only_reason: str = ""
    preference: str | None = None
    #: A system prompt for this request only (sent first, not stored in the session).
    system: str | None = None
    #: Earlier messages given by the caller instead of a stored session (e.g. an HTTP
    #: client that sends the whole conversation); used only without ``session_id``.
    history: tuple[ChatMessage, ...] | None = None
    #: Whether the exchange is stored (in ``session_id``, or in a new session).
    store: bool = True
    #: Makes retries of this request answered once (see :mod:`oblix_core.request.idempotency`).
    idempotency_key: str | None = None
    #: Documents the request draws on (``workspace_id=``, connectors): searched once, before
    #: routing (:mod:`oblix_core.documents.retrieval`); ``sources`` holds what was used.
    retrieval: Retrieval | None = None
    sources: tuple[dict[str, Any], ...] = ()
    #: Further reasons that make the request local-only (a private workspace), for ``privacy.decide``.
    local_only_sources: tuple[str, ...] = ()
