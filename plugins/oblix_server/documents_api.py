"""Documents on the server: ``POST /v1/embeddings`` and a workspace for chat completions.

* ``POST /v1/embeddings`` (OpenAI's shape; the official client's ``embeddings.create``
  works): ``input`` a string or a list of strings (at most :data:`MAX_INPUTS`), ``model``
  ``local`` (the default embedder, all-MiniLM, in-process) or an embedder spec the client
  knows (``local:all-minilm-l6-v2``), never one naming an endpoint (``openai:M@URL`` is
  refused: the server would send the texts, and its key, where a caller says);
  ``encoding_format`` ``float`` or ``base64`` (little-endian float32, what the official
  client asks for by default).
* ``GET /v1/oblix/workspaces`` (the dashboard's Documents tab): workspaces and their sizes.
* Chat completions take ``"oblix_workspace": "W"`` (or a list of workspaces) in the body
  (``extra_body`` in the official client): the answer draws on workspace W's documents and the response's
  ``oblix_sources`` lists them; a private workspace makes the request local-only.

The embedding runs in a worker thread; the event loop never blocks on it.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oblix.plugin import DocumentError, OblixClient, OblixError
from oblix_server.errors import APIError, from_oblix
from oblix_server.limits import read_body

EMBEDDINGS_PATH = "/v1/embeddings"
#: The body field of a chat completion that names a workspace.
WORKSPACE_FIELD = "oblix_workspace"
MAX_INPUTS = 2048
#: The most workspaces one chat completion may draw on.
MAX_WORKSPACES = 32
#: Model names that mean the local default embedder.
LOCAL_NAMES = ("local", "default", "all-minilm-l6-v2")


def workspace_field(body: dict[str, Any]) -> str | tuple[str, ...] | None:
    """The ``oblix_workspace`` of a chat completion body, checked: a workspace name or id, or a
    non-empty list of them (as ``execute(workspace_id=[...])``)."""
    value = body.get(WORKSPACE_FIELD)
    if value is None:
        return None
    names = value if isinstance(value, list) else [value]
    if not names or len(names) > MAX_WORKSPACES or not all(isinstance(n, str) and n.strip() for n in names):
        raise APIError(
            400,
            f"'{WORKSPACE_FIELD}' must be a workspace name or id, or a list of at most {MAX_WORKSPACES}.",
            code="invalid_type",
            param=WORKSPACE_FIELD,
        )
    return tuple(names) if isinstance(value, list) else value


def _inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(
            400,
            "'input' must be a string or a non-empty list of strings (token arrays are not accepted).",
            code="invalid_type",
            param="input",
        )
    if len(texts) > MAX_INPUTS:
        raise APIError(422, f"At most {MAX_INPUTS} inputs per request.", code="invalid_value", param="input")
    return texts


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``."""
    client: OblixClient = request.app.state.oblix.client
    raw = await read_body(request, request.app.state.oblix.settings.max_body_bytes)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    texts = _inputs(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise APIError(
            422,
            "'encoding_format' must be 'float' or 'base64'.",
            code="invalid_value",
            param="encoding_format",
        )
    model = body.get("model") or "local"
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", code="invalid_type", param="model")
    if "@" in model or "://" in model:  # else a caller picks where the server sends texts and its key
        raise APIError(
            422,
            "'model' names an embedder (e.g. 'local' or 'openai:text-embedding-3-small'), not an "
            "endpoint: a request cannot choose where the server sends texts (and its API key).",
            code="invalid_value",
            param="model",
        )
    try:
        name, vectors = await client.embed_texts(texts, None if model in LOCAL_NAMES else model)
    except OblixError as exc:
        raise from_oblix(exc) from None
    tokens = sum(len(t.split()) for t in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                for i, v in enumerate(vectors)
            ],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def workspaces(request: Request) -> Response:
    """``GET /v1/oblix/workspaces`` (the dashboard's Documents tab): each workspace and its size."""
    client: OblixClient = request.app.state.oblix.client
    try:
        found = await client.list_workspaces()
    except DocumentError as exc:  # the documents extra is not installed: an empty list that says so
        return JSONResponse({"workspaces": [], "note": str(exc)})
    except OblixError as exc:
        raise from_oblix(exc) from None
    keep = ("id", "name", "description", "private", "embedder", "documents", "chunks", "bytes", "created_at")
    rows = [{k: w[k] for k in keep} | {"sources": [c["path"] for c in w["connectors"]]} for w in found]
    return JSONResponse(
        {"workspaces": rows, "note": "" if rows else "No workspace yet: oblix docs add PATH."}
    )


def routes() -> list[Route]:
    return [
        Route(EMBEDDINGS_PATH, embeddings, methods=["POST"]),
        Route("/v1/oblix/workspaces", workspaces, methods=["GET"]),
    ]
