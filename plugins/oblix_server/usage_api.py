"""Oblix's own endpoints beside the OpenAI API (same key): usage, metrics, and what the dashboard
reads.

* ``GET /v1/oblix/usage?since=7d&by=model|day|session&versus=MODEL``: ``oblix usage --json``;
* ``GET /metrics``: Prometheus text format (see :mod:`oblix_server.metrics`);
* ``GET /v1/oblix/sessions?q=TEXT&limit=N``, ``GET /v1/oblix/sessions/{id}``: sessions, a search,
  one session;
* ``GET /v1/oblix/models``: each model's health, and the recent failures;
* ``GET /v1/oblix/agents``: the agents' readings over the last hour;
* ``GET /v1/oblix/decisions``: the latest routing decisions with their reasons.

Store reads run in worker threads; the event loop never blocks.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oblix.plugin import ConfigError, OblixClient, OblixError, SessionNotFoundError
from oblix_server.errors import APIError
from oblix_server.metrics import Observer


def _client(request: Request) -> OblixClient:
    return request.app.state.oblix.client


def install_observer(app: Any, client: OblixClient) -> Observer:
    """Make the app's :class:`Observer`, register it on ``client`` and start sampling agents."""
    seen = app.state.oblix_observer = Observer(client)
    client.plugin_manager.register(seen, name=f"oblix-server-observer-{id(seen)}")
    seen.sample_readings(force=True)
    seen.start_sampling(threading.Event())
    return seen


def observer(request: Request) -> Observer:
    """The app's observer (see :func:`install_observer`)."""
    return request.app.state.oblix_observer


def _limit(request: Request, default: int, most: int = 1000) -> int:
    raw = request.query_params.get("limit", str(default))
    # ASCII digits only (str.isdigit() also takes "²", which int() refuses), and not thousands of them
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 0 < int(raw) <= most:
        raise APIError(400, f"limit must be an integer from 1 to {most}, got {raw!r:.40}.", param="limit")
    return int(raw)


async def usage(request: Request) -> Response:
    query = request.query_params
    since, by, versus = query.get("since", "7d"), query.get("by") or None, query.get("versus") or None
    try:
        report = await anyio.to_thread.run_sync(
            lambda: _client(request).usage(since=since, by=by, versus=versus)
        )
    except OverflowError:  # a period reaching before year 1
        message = f"since={since!r} reaches out of the calendar's range: use a shorter period, or a date."
        raise APIError(400, message, code="invalid_usage_query", param="since") from None
    except OblixError as exc:
        raise usage_error(exc) from None
    return JSONResponse(report)


def usage_error(exc: OblixError) -> APIError:
    """A query the core refused is the client's to fix (400); any other core error reading the
    ledger (a damaged or unreadable ledger, whose message names it) is the server's (503)."""
    if type(exc) in (OblixError, ConfigError):
        return APIError(400, str(exc), code="invalid_usage_query")
    return APIError(503, str(exc), code="usage_ledger_unavailable")


async def metrics(request: Request) -> Response:
    body = await anyio.to_thread.run_sync(observer(request).exposition)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def sessions(request: Request) -> Response:
    client, text, limit = _client(request), request.query_params.get("q", "").strip(), _limit(request, 50)
    if text:
        found = await anyio.to_thread.run_sync(lambda: client.store.search(text, limit))
    else:
        found = await anyio.to_thread.run_sync(lambda: client.list_sessions(limit=limit))
    return JSONResponse({"data": found})


async def session(request: Request) -> Response:
    client, session_id = _client(request), request.path_params["session_id"]
    try:
        record = await anyio.to_thread.run_sync(client.load_session, session_id)
    except SessionNotFoundError:
        raise APIError(404, f"No session {session_id!r}.", code="session_not_found") from None
    except OblixError as exc:
        raise APIError(400, str(exc), code="invalid_session_id") from None
    return JSONResponse(record)


async def models(request: Request) -> Response:
    client, seen = _client(request), observer(request)
    health = client.model_health()
    data = [
        {"id": m.model_id, "locality": "local" if m.is_local else "cloud", **health[m.model_id]}
        for m in client.models
    ]
    return JSONResponse({"data": data, "failures": list(seen.failures)[:50]})


async def agents(request: Request) -> Response:
    seen = observer(request)
    readings = await anyio.to_thread.run_sync(seen.recent_readings)
    return JSONResponse({"data": readings})


async def decisions(request: Request) -> Response:
    limit = _limit(request, 50, most=200)
    recent: list[dict[str, Any]] = list(observer(request).decisions)[:limit]
    return JSONResponse({"data": recent})


def routes() -> list[Route]:
    """The endpoints of this module."""
    return [
        Route("/v1/oblix/usage", usage, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/oblix/sessions", sessions, methods=["GET"]),
        Route("/v1/oblix/sessions/{session_id}", session, methods=["GET"]),
        Route("/v1/oblix/models", models, methods=["GET"]),
        Route("/v1/oblix/agents", agents, methods=["GET"]),
        Route("/v1/oblix/decisions", decisions, methods=["GET"]),
    ]
