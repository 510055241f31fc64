"""The server's ASGI entry: ``POST /v1/chat/completions`` straight to its handler, the rest via Starlette.

Starlette's stack around an endpoint (its error middleware, the :class:`~oblix_server.guard.Guard`,
its exception middleware, the router, each wrapping ``send``) costs about as much as
parsing the request and shaping the answer together. The chat endpoint, which carries the
load, is served here with the same rules and the same answers: the key checked from the
headers (401 before the body, connection closed), ``X-Oblix-Request-Id`` on every response,
OpenAI-style errors, and for anything unexpected a logged line and a 500 before the
exception goes on to uvicorn. Any other path, or another method on this one (405), goes
to the Starlette app unchanged.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from oblix.plugin import new_request_id
from oblix_server.completions import chat_completions
from oblix_server.errors import internal
from oblix_server.guard import refusal
from oblix_server.settings import ServerSettings

log = logging.getLogger("oblix_server.app")

CHAT_PATH = "/v1/chat/completions"
_REQUEST_ID = b"x-oblix-request-id"


class ServerApp:
    """The ASGI app ``oblix server`` runs: the chat endpoint here, everything else in :attr:`app`."""

    def __init__(self, app: Starlette, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != CHAT_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        scope["app"] = self.app
        try:
            response = refusal(self.settings, Headers(scope=scope)) or await chat_completions(
                Request(scope, receive)
            )
        except Exception as exc:  # chat_completions answers its own APIErrors
            log_unexpected(request_id, exc)
            await unexpected_response(request_id)(scope, receive, send)
            raise
        if not any(name == _REQUEST_ID for name, _ in response.raw_headers):
            response.raw_headers.append((_REQUEST_ID, request_id.encode()))
        try:
            await response(scope, receive, send)
        except Exception as exc:  # after the response started: uvicorn closes the connection
            log_unexpected(request_id, exc)
            raise


def log_unexpected(request_id: str, exc: Exception) -> None:
    """Log an unexpected failure in one line."""
    log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc)


def unexpected_response(request_id: str) -> Response:
    """The 500 the client gets for an unexpected failure (never a stack trace)."""
    return internal(request_id).response({"X-Oblix-Request-Id": request_id})
