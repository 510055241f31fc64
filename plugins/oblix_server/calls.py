"""From a checked chat request and its headers to the arguments of ``OblixClient.stream``.

Sessions over HTTP:

* ``X-Oblix-Session-Id: <id>`` continues a stored session: the client sends only the new
  message (after optional system messages); the server reads the history from the store
  and appends the exchange.
* ``X-Oblix-Session-Id: new`` starts a stored session from this request's messages; the
  response's ``X-Oblix-Session-Id`` names it.
* No header: stateless; the request's earlier messages are the history and nothing is
  stored, unless the server runs with ``--store-all`` (then as ``new``).

``X-Oblix-Local-Only: true`` keeps the request (and its session, from then on) local. The
value is read by ``parse_flag``: ``1 true t yes y on`` / ``0 false f no n off`` (any case);
anything else is refused with 400 before anything is sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from starlette.datastructures import Headers

from oblix.plugin import OblixClient, OblixError, decide_local_only, parse_flag
from oblix_server.errors import IDEMPOTENCY_HEADER, APIError, from_oblix
from oblix_server.guard import offered_key
from oblix_server.schema import ChatRequest

SESSION_HEADER = "X-Oblix-Session-Id"
LOCAL_ONLY_HEADER = "X-Oblix-Local-Only"
#: The ``model`` value that lets Oblix route.
AUTO = "auto"


@attrs.frozen
class Call:
    """The arguments of one ``client.stream(...)`` call."""

    prompt: str
    session_id: str | None
    options: dict[str, Any]
    temperature: float | None
    max_tokens: int | None

    @property
    def stored(self) -> bool:
        return bool(self.options.get("store", True))


def local_only_header(headers: Headers) -> bool:
    """Whether the request asks to stay local; a value that is not a clear yes or no is a 400.

    Every ``X-Oblix-Local-Only`` header counts (one saying yes is enough): a repeated
    header, or a word like ``enabled``, is never read as "not local-only".
    """
    name = f"The {LOCAL_ONLY_HEADER} header"
    try:
        return any([parse_flag(value, name) for value in headers.getlist(LOCAL_ONLY_HEADER)])
    except OblixError as exc:
        message = f"{exc} Nothing was sent."
        raise APIError(400, message, code="invalid_header", param=LOCAL_ONLY_HEADER) from None


def idempotency_key(headers: Headers) -> str | None:
    """The request's ``Idempotency-Key``, scoped to the API key that sent it (one client can
    never replay another's answer); ``None`` without the header. A bad key is a 400."""
    values = headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    key = values[0].strip()
    if len(values) > 1 or not key or len(key) > 255 or not key.isprintable():
        raise APIError(
            400,
            f"The {IDEMPOTENCY_HEADER} header must appear once, with 1-255 printable characters "
            "(e.g. a UUID made once per request and sent again with each retry). Nothing was sent.",
            code="invalid_header",
            param=IDEMPOTENCY_HEADER,
        )
    scope = hashlib.sha256((offered_key(headers) or "").encode()).hexdigest()[:16]
    return f"{scope}:{key}"


def _forced_model(client: OblixClient, chat: ChatRequest) -> str | None:
    """The hooked model the request names (an id, an alias or a bare name), or ``None`` for auto."""
    if chat.model == AUTO:
        return None
    try:
        return client.resolve_model(chat.model)
    except OblixError:
        hooked = ", ".join([AUTO, *(m.model_id for m in client.models), *client.config.aliases])
        raise APIError(
            404,
            f"The model {chat.model!r} does not exist on this server. Use one of: {hooked}.",
            code="model_not_found",
            param="model",
        ) from None


def _refuse_tools(client: OblixClient, chat: ChatRequest, forced: str | None) -> None:
    """Tools are never dropped silently: without a model that can call them, the request is refused."""
    uses_tools = chat.tools or any(m.role == "tool" or m.tool_calls for m in chat.messages)
    if not uses_tools:
        return
    found = client.find_model(forced) if forced else None
    models = [found] if found else client.models
    if any(m.supports_tools for m in models):
        return
    hooked = ", ".join(m.model_id for m in models) or "none"
    raise APIError(
        400,
        f"This request uses tools, but no {'requested' if forced else 'hooked'} model can call tools "
        f"({hooked}). Use a tool-capable (OpenAI-compatible) model, or send it without tools.",
        code="tools_not_supported",
        param="tools",
    )


def build_call(client: OblixClient, chat: ChatRequest, headers: Headers, store_all: bool) -> Call:
    """Check the request against the hooked models and sessions rules; raises :class:`APIError`."""
    model = _forced_model(client, chat)
    _refuse_tools(client, chat, model)
    leading = 0
    while chat.messages[leading].role == "system":
        leading += 1
    system = "\n\n".join(m.content for m in chat.messages[:leading]) or None
    rest = chat.messages[leading:]  # not empty: the schema requires a last user message
    earlier = [m.to_dict() for m in rest[:-1]]
    session = (headers.get(SESSION_HEADER) or "").strip() or None
    options: dict[str, Any] = {"system": system, "local_only": local_only_header(headers)}
    key = idempotency_key(headers)
    if key is not None:
        options["idempotency_key"] = key
    if model:
        options["model"] = model
    options.update(chat.model_options())
    if chat.workspace:  # documents: the workspace the answer draws on (oblix_workspace)
        options["workspace_id"] = chat.workspace
    if session is not None and session.lower() != "new":
        if earlier:
            raise APIError(
                422,
                f"With {SESSION_HEADER} the session holds the history: send only the new user message "
                f"(and optional system messages), not {len(earlier)} earlier messages.",
                code="history_with_session",
                param="messages",
            )
    else:
        options["history"] = earlier
        options["store"] = store_all or session is not None
        session = None
    if chat.tools and options.get("store", True):
        raise APIError(
            422,
            "Tool calls are served statelessly: send requests with 'tools' without "
            f"{SESSION_HEADER} (and to a server without --store-all).",
            code="tools_with_session",
            param="tools",
        )
    return Call(rest[-1].content, session, options, chat.temperature, chat.max_tokens)


async def check_privacy(client: OblixClient, call: Call) -> None:
    """A stored session must exist; a local-only request or session never forces a cloud model."""
    local_only = bool(call.options.get("local_only"))
    if call.session_id is not None:
        try:
            metadata = await client.aget_session_metadata(call.session_id)
        except OblixError as exc:
            raise from_oblix(exc) from None
        local_only = decide_local_only(local_only, metadata, session_id=call.session_id).active
    forced = call.options.get("model")
    model = client.find_model(forced) if forced else None
    if local_only and model is not None and not model.is_local:
        raise APIError(
            422,
            f"{forced} is a cloud model but this request is local-only (its session or the "
            f"{LOCAL_ONLY_HEADER} header); nothing was sent. Use 'auto' or a local model.",
            code="local_only",
            param="model",
        )
