"""``POST /v1/chat/completions``: run one request through the client, whole or streamed.

The handler waits for the first token before it answers, so that failures before it
(unknown session, no model, every candidate failing over) get a proper HTTP status and
the headers can name the model that answers. After the first token the response is an
SSE stream; a failure then ends it with an OpenAI-style error event (the core has stored
the partial answer, marked interrupted). A client that disconnects, at any point,
cancels the generation at once: the :class:`ResponseStream` is closed, which stops the
model (llama.cpp within a token; the upstream HTTP request of a cloud model is closed).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

import oblix_server.shapes as shapes
from oblix.plugin import OblixError, ResponseStream
from oblix_server.calls import SESSION_HEADER, Call, build_call, check_privacy
from oblix_server.disconnect import CancelOnDisconnect
from oblix_server.errors import APIError, from_oblix, internal
from oblix_server.limits import read_body
from oblix_server.schema import ChatRequest, parse_chat_request
from oblix_server.state import ServerState

log = logging.getLogger(__name__)

#: Seconds allowed for closing a stream (stopping the model) after the client left.
CLOSE_TIMEOUT = 5.0
#: Request bodies up to this size are parsed and checked on the event loop (well under a
#: millisecond); larger ones in a worker thread, so that the loop keeps serving meanwhile.
INLINE_BODY = 64 * 1024

#: More messages than this: the request is built (checked, converted) in a worker thread.
LONG_REQUEST = 256


class _Disconnected(Exception):
    """The client went away before the answer started."""


async def _unless_disconnected(func: Callable[[], Awaitable[Any]], request: Request) -> Any:
    """``await func()``, cancelled as soon as the client disconnects (then :class:`_Disconnected`)."""
    with CancelOnDisconnect(request.scope, request.receive):
        return await func()
    raise _Disconnected  # the watcher cancelled the block


async def _close(stream: ResponseStream) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await stream.aclose()


def _headers(
    request_id: str, stream: ResponseStream | None, session_id: str | None = None, answered: bool = True
) -> dict[str, str]:
    """The ``X-Oblix-*`` headers; on an error no model answered (``X-Oblix-Model: none``).

    A stream's headers go out with its first token: by then the stream knows the rule
    that routed it and the model answering (no other model can take over after it).
    """
    decision = (stream.routing_decision if stream is not None else None) or {}
    model = stream.answering_model_id if stream is not None and answered else None
    headers = {
        "X-Oblix-Request-Id": request_id,
        "X-Oblix-Model": model or "none",
        "X-Oblix-Route": decision.get("rule") or "none",
    }
    if session_id:
        headers[SESSION_HEADER] = session_id
    return headers


async def chat_completions(request: Request) -> Response:
    """The endpoint: check, queue, run; every failure is OpenAI-style JSON."""
    state: ServerState = request.app.state.oblix
    request_id: str = request.scope["state"]["request_id"]
    stream: ResponseStream | None = None
    try:
        chat, call = await _prepare(request, state)
        await check_privacy(state.client, call)
        await state.limiter.acquire()
    except APIError as exc:
        return exc.response(_headers(request_id, stream, answered=False))
    handed_over = False
    try:
        start = functools.partial(
            state.client.stream,
            call.prompt,
            call.temperature,
            call.max_tokens,
            request_id=request_id,
            session_id=call.session_id,
            **call.options,
        )
        # a long history is checked and converted in a worker thread: /health stays quick
        long = len(chat.messages) > LONG_REQUEST
        stream = await anyio.to_thread.run_sync(start) if long else start()
        if chat.stream:
            response = await _start_stream(request, state, chat, call, stream)
            handed_over = isinstance(response, _SSEResponse)
            return response
        return await _answer_whole(request, call, stream)
    except APIError as exc:
        return exc.response(_headers(request_id, stream, answered=False))
    except OblixError as exc:
        return from_oblix(exc).response(_headers(request_id, stream, answered=False))
    finally:
        if not handed_over:
            state.limiter.release()


async def _prepare(request: Request, state: ServerState) -> tuple[ChatRequest, Call]:
    """The checked request and its call; a large body is parsed in a worker thread."""
    body = await read_body(request, state.settings.max_body_bytes)

    def prepare() -> tuple[ChatRequest, Call]:
        chat = parse_chat_request(body, state.settings.max_messages)
        return chat, build_call(state.client, chat, request.headers, state.settings.store_all)

    if len(body) <= INLINE_BODY:
        return prepare()
    return await anyio.to_thread.run_sync(prepare)


async def _answer_whole(request: Request, call: Call, stream: ResponseStream) -> Response:
    try:
        result = await _unless_disconnected(stream.collect, request)
    except _Disconnected:
        await _close(stream)
        return Response(status_code=499)  # nobody reads it; the generation was cancelled
    await stream.recorded()  # in the ledger before the answer goes out (a kill loses no record)
    session_id = result["session_id"] if call.stored else None
    headers = _headers(result["request_id"], stream, session_id) | {"X-Oblix-Model": result["model_id"]}
    body = shapes.completion(shapes.completion_id(result["request_id"]), int(time.time()), result)
    return JSONResponse(body, headers=headers)


async def _start_stream(
    request: Request,
    state: ServerState,
    chat: ChatRequest,
    call: Call,
    stream: ResponseStream,
) -> Response:
    """Wait for the first token (or a failure), then hand the rest to an SSE response."""
    try:
        first = await _unless_disconnected(stream.__anext__, request)
    except _Disconnected:
        await _close(stream)
        return Response(status_code=499)
    except StopAsyncIteration:  # no text: an answer made only of tool calls
        if stream.result is None or not stream.result.get("tool_calls"):
            raise APIError(502, "The model ended its answer without any text.", code="empty_answer") from None
        await stream.recorded()
        headers = _headers(stream.request_id, stream)
        events = _tool_call_events(stream.result, chat.include_usage)
        return _SSEResponse(events, stream, state, headers=headers | {"Cache-Control": "no-cache"})
    except BaseException:
        await _close(stream)
        raise
    session_id = stream.request.session_id if call.stored else None
    headers = _headers(stream.request_id, stream, session_id)
    events = _events(stream, first, chat.include_usage)
    return _SSEResponse(events, stream, state, headers=headers | {"Cache-Control": "no-cache"})


async def _events(stream: ResponseStream, first: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE events: role + first text, more text, the finish, usage if asked, ``[DONE]``."""
    cid, created = shapes.completion_id(stream.request_id), int(time.time())
    model = stream.answering_model_id or ""
    yield shapes.sse(shapes.chunk(cid, created, model, {"role": "assistant", "content": first}))
    try:
        async for text in stream:
            yield shapes.sse(shapes.chunk(cid, created, model, {"content": text}))
    except OblixError as exc:
        error = from_oblix(exc)
        yield shapes.sse(error.body())
        return
    except Exception:
        log.exception("request %s failed while streaming", stream.request_id)
        yield shapes.sse(internal(stream.request_id).body())
        return
    assert stream.result is not None
    await stream.recorded()  # in the ledger before the answer's end goes out
    metrics = stream.result["metrics"]
    yield shapes.sse(shapes.chunk(cid, created, model, {}, shapes.finish_reason(metrics)))
    if include_usage:
        yield shapes.sse(shapes.chunk(cid, created, model, None, usage_data=shapes.usage(metrics)))
    yield shapes.sse("[DONE]")


async def _tool_call_events(result: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE events of an answer made of tool calls: the calls, the finish, usage, ``[DONE]``."""
    cid, created, model = shapes.completion_id(result["request_id"]), int(time.time()), result["model_id"]
    delta = {
        "role": "assistant",
        "content": None,
        "tool_calls": shapes.tool_call_deltas(result["tool_calls"]),
    }
    yield shapes.sse(shapes.chunk(cid, created, model, delta))
    yield shapes.sse(shapes.chunk(cid, created, model, {}, shapes.finish_reason(result["metrics"])))
    if include_usage:
        yield shapes.sse(shapes.chunk(cid, created, model, None, usage_data=shapes.usage(result["metrics"])))
    yield shapes.sse("[DONE]")


class _SSEResponse(Response):
    """An SSE response that stops when the client leaves, and always closes the model's stream and
    frees its slot, however it ends."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        stream: ResponseStream,
        state: ServerState,
        headers: dict[str, str],
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._events = events
        self._stream = stream
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            with CancelOnDisconnect(scope, receive):
                async for event in self._events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._events.aclose()  # type: ignore[attr-defined]
                await self._stream.aclose()
            self._state.limiter.release()
