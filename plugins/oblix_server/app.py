"""The ASGI app: Starlette's routes, error handlers and middleware, behind the connection tracker.

:data:`ROUTES` is the route table: each module contributes its routes through a function
that returns them, so a new endpoint is one module and one line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oblix.plugin import OblixClient, OblixError
from oblix_server.calls import AUTO
from oblix_server.completions import chat_completions
from oblix_server.connections import TrackedApp
from oblix_server.documents_api import routes as documents_routes
from oblix_server.errors import APIError, internal
from oblix_server.guard import Guard, is_authorized
from oblix_server.settings import ServerSettings
from oblix_server.state import ServerState
from oblix_server.ui import routes as ui_routes
from oblix_server.usage_api import install_observer
from oblix_server.usage_api import routes as oblix_routes

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


def _model_entry(state: ServerState, model: Any) -> dict[str, Any]:
    return {
        "id": model.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": model.model_type,
        "locality": "local" if model.is_local else "cloud",
        "context_window": model.context_window,
    }


def _auto_entry(state: ServerState) -> dict[str, Any]:
    return {
        "id": AUTO,
        "object": "model",
        "created": state.started,
        "owned_by": "oblix",
        "locality": "routed",
        "description": "Oblix chooses among the hooked models (agents and routing policy).",
    }


def _alias_entries(state: ServerState) -> list[dict[str, Any]]:
    """``[aliases]`` names whose target is hooked: usable as a ``model`` like the ids."""
    entries = []
    for alias in sorted(state.client.config.aliases):
        model = _resolved(state, alias)
        if model is not None and alias != model.model_id:
            entries.append(_model_entry(state, model) | {"id": alias, "alias_of": model.model_id})
    return entries


def _resolved(state: ServerState, name: str) -> Any:
    """The hooked model ``name`` means (an id, an alias or a bare name), or ``None``."""
    try:
        return state.client.find_model(state.client.resolve_model(name))
    except OblixError:
        return None


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.oblix
    models = [_model_entry(state, m) for m in state.client.models]
    data = [_auto_entry(state), *models, *_alias_entries(state)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    state: ServerState = request.app.state.oblix
    model_id = request.path_params["model_id"]
    if model_id == AUTO:
        return JSONResponse(_auto_entry(state))
    model = _resolved(state, model_id)
    if model is None:
        raise APIError(404, f"The model {model_id!r} does not exist on this server.", code="model_not_found")
    entry = _model_entry(state, model)
    if model_id != model.model_id:
        entry |= {"id": model_id, "alias_of": model.model_id}
    return JSONResponse(entry)


def _serving(state: ServerState) -> list[dict[str, Any]]:
    health = state.client.model_health()
    return [
        {
            "id": m.model_id,
            "locality": "local" if m.is_local else "cloud",
            "available": health[m.model_id]["available"],
            "busy": health[m.model_id]["busy"],
        }
        for m in state.client.models
    ]


async def health(request: Request) -> Response:
    """200 when at least one model can serve (hooked, started, not cooling down), else 503.

    Without the key (when one is set) only the status is shown.
    """
    state: ServerState = request.app.state.oblix
    models = _serving(state)
    ok = any(m["available"] for m in models)
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
    if is_authorized(state.settings, request.headers):
        body |= {
            "models": models,
            "agents": [c.to_dict() for c in state.client.agent_checks()],
            "store": state.client.store.name,
            "in_flight": state.limiter.in_flight,
            "waiting": state.limiter.waiting,
        }
    return JSONResponse(body, status_code=200 if ok else 503)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (
            f"No such endpoint: {request.method} {request.url.path}. Oblix serves /v1/chat/completions, "
        )
        message += "/v1/models, /v1/oblix/*, /metrics, /ui and /health."
    else:
        message = f"{exc.detail} ({request.method} {request.url.path})."
    return APIError(exc.status_code, message, code="http_error").response(dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A 500 that names the request (never a stack trace); the details go to the log in one line."""
    request_id = request.scope.get("state", {}).get("request_id", "?")
    log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc)
    return internal(request_id).response({"X-Oblix-Request-Id": request_id})


def core_routes() -> list[Route]:
    """The OpenAI-compatible endpoints and the health probe."""
    return [
        Route(CHAT_PATH, chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


#: The route table: functions each returning a module's routes (add a module's function to serve it).
ROUTES: list[Callable[[], list[Route]]] = [core_routes, oblix_routes, ui_routes, documents_routes]


def create_app(client: OblixClient, settings: ServerSettings) -> TrackedApp:
    """The server app for a client whose models are already hooked."""
    app = Starlette(
        routes=[route for routes in ROUTES for route in routes()],
        middleware=[Middleware(Guard, settings=settings)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.oblix = ServerState.create(client, settings)
    install_observer(app, client)
    return TrackedApp(app)
