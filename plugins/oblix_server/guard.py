"""ASGI middleware in front of every route: a request id on every response, the edge rules
(:mod:`oblix_server.edges`), and the API key."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oblix.plugin import new_request_id
from oblix_server.edges import body_refusal, edge_refusal
from oblix_server.errors import APIError
from oblix_server.settings import ServerSettings
from oblix_server.ui import UI_PATHS

#: Paths served without a key (a health probe sees only the status, not the details).
OPEN_PATHS = frozenset({"/health", *UI_PATHS})  # the dashboard's files hold no data


def offered_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer <key>``, if any."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def is_authorized(settings: ServerSettings, headers: Headers) -> bool:
    if settings.api_key is None:
        return True
    key = offered_key(headers)
    return key is not None and settings.key_matches(key)


class Guard:
    """Adds ``X-Oblix-Request-Id`` to every response; refuses what :mod:`oblix_server.edges` refuses,
    then requests without the key (401), then bodies that are not JSON (415).

    A refused request is refused before its body is read, and its connection closed.

    The id is put in ``scope["state"]["request_id"]``; the chat endpoint uses it as the
    Oblix request id. Keys are compared in constant time and never logged.
    """

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-oblix-request-id" not in headers:
                    headers["X-Oblix-Request-Id"] = request_id
            await send(message)

        error = _refusal(self.settings, scope)
        if error is not None:
            await error(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def _refusal(settings: ServerSettings, scope: Scope) -> Response | None:
    headers, path = Headers(scope=scope), scope["path"]
    refused = edge_refusal(settings, path, headers)
    if refused is not None:
        return refused.response()
    if path in OPEN_PATHS:
        return None
    key = refusal(settings, headers)
    if key is not None:
        return key
    refused = body_refusal(scope["method"], headers)
    return refused.response() if refused is not None else None


def refusal(settings: ServerSettings, headers: Headers) -> Response | None:
    """The 401 for a request without the key (its connection closed: the body is never read)."""
    if is_authorized(settings, headers):
        return None
    missing = offered_key(headers) is None
    return APIError(
        401,
        "Missing API key: send it as 'Authorization: Bearer <key>' (the openai client's api_key)."
        if missing
        else "Incorrect API key provided.",
        code="missing_api_key" if missing else "invalid_api_key",
        headers={"WWW-Authenticate": "Bearer", "Connection": "close"},  # body never read
    ).response()
