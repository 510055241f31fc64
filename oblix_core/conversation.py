"""One request end to end: history, middleware, routing, execution, persistence."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from oblix_core.errors import OblixError, StreamInterruptedError
from oblix_core.execution import Outcome
from oblix_core.history import session_messages
from oblix_core.records import Message, SessionRecord, new_session_id, utc_now
from oblix_core.requests import RequestContext, new_request_id
from oblix_core.routing import RouteRequest, RoutingPlan

if TYPE_CHECKING:
    from oblix_core.client import OblixClient

log = logging.getLogger(__name__)

#: Messages of history read for a request when no model is hooked (then routing fails anyway).
DEFAULT_HISTORY_LIMIT = 4096
#: ``execute``/``stream`` keyword options that steer Oblix rather than the model.
ROUTING_OPTIONS = ("model", "local_only", "preference")


class ResponseStream:
    """An async iterator over the answer's text chunks, for programs.

    ``async for chunk in client.stream("Hi", session_id=sid): ...``; after the loop,
    :attr:`result` holds the same dict ``execute`` returns. Leaving the loop early (or
    cancelling) stops the model promptly; an unfinished answer is not stored.
    """

    def __init__(
        self,
        client: OblixClient,
        prompt: str,
        *,
        session_id: str | None,
        temperature: float | None,
        max_tokens: int | None,
        request_id: str | None,
        options: dict[str, Any],
    ) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise OblixError("The prompt is empty; pass the text to send to the model.")
        self._client = client
        self._prompt = prompt
        self._session_id = session_id
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._request_id = request_id or new_request_id()
        self._routing = {k: options.pop(k) for k in ROUTING_OPTIONS if k in options}
        self._options = options
        self._agen: AsyncGenerator[str, None] | None = None
        self._new_session: SessionRecord | None = None
        self.result: dict[str, Any] | None = None

    @property
    def request_id(self) -> str:
        return self._request_id

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> str:
        if self._agen is None:
            self._agen = self._run()
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        if self._agen is not None:
            await self._agen.aclose()

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def collect(self) -> dict[str, Any]:
        """Consume the whole answer and return the result dict."""
        async with self:
            async for _ in self:
                pass
        assert self.result is not None
        return self.result

    async def _session(self) -> SessionRecord:
        """The session's recent history; a new session (stored only once answered) if none given."""
        client = self._client
        session_id = self._session_id or client.current_session_id
        if session_id is None:
            now = utc_now()
            self._new_session = SessionRecord(
                id=new_session_id(),
                title=self._prompt.strip().splitlines()[0][:60],
                created_at=now,
                updated_at=now,
            )
            return self._new_session
        # no model can take more messages than tokens in its window (each costs >= 1 token)
        limit = max((m.context_window for m in client.models), default=DEFAULT_HISTORY_LIMIT)
        return await anyio.to_thread.run_sync(client.store.load_recent, session_id, limit)

    def _route_request(self, session: SessionRecord) -> RouteRequest:
        local_only = bool(self._routing.get("local_only"))
        reason = "requested with local_only=True" if local_only else ""
        if session.metadata.get("local_only") is True:
            local_only, reason = True, f"session {session.id} has metadata local_only=true"
        return RouteRequest(
            preference=self._routing.get("preference") or self._client.preference,
            local_only=local_only,
            local_only_reason=reason,
            model=self._routing.get("model"),
        )

    async def _run(self) -> AsyncGenerator[str, None]:
        client = self._client
        started_at, started = utc_now(), time.monotonic()
        session = await self._session()
        request = RequestContext(
            prompt=self._prompt,
            session_id=session.id,
            messages=session_messages(session, self._prompt),
            request_id=self._request_id,
            temperature=self._temperature,
            max_tokens=self._max_tokens,
            options=self._options,
        )
        hook = client.plugin_manager.hook
        try:
            hook.oblix_request_start(request=request)
            checks = client.agent_checks()
            plan: RoutingPlan = hook.oblix_route(
                request=self._route_request(session), models=client.models, checks=checks
            )
            outcome = Outcome()
            try:
                async with aclosing(
                    client.executor.run(
                        plan.candidates,
                        request.messages,
                        temperature=request.temperature,
                        max_tokens=request.max_tokens,
                        options=request.options,
                        outcome=outcome,
                    )
                ) as chunks:
                    async for text in chunks:
                        yield text
            except StreamInterruptedError as exc:
                await self._persist(session.id, started_at, exc.partial, exc.model_id, {"interrupted": True})
                raise
            assert outcome.model is not None
            metrics = outcome.metrics | {"total_latency_ms": round((time.monotonic() - started) * 1000, 2)}
            await self._persist(session.id, started_at, outcome.text, outcome.model.model_id, metrics)
            self.result = {
                "response": outcome.text,
                "model_id": outcome.model.model_id,
                "session_id": session.id,
                "request_id": request.request_id,
                "metrics": metrics,
                "agent_checks": {c.agent: c.to_dict() for c in checks},
                "routing_decision": plan.decision() | {"selected": outcome.model.model_id},
            }
        except BaseException as exc:
            if isinstance(exc, Exception):
                _notify(hook.oblix_request_error, request=request, error=exc)
            raise
        _notify(hook.oblix_request_end, request=request, result=self.result)

    async def _persist(
        self, session_id: str, started_at: str, text: str, model_id: str | None, metrics: dict[str, Any]
    ) -> None:
        messages = [
            Message("user", self._prompt, timestamp=started_at),
            Message("assistant", text, model_id=model_id, metrics=metrics),
        ]
        store = self._client.store
        if self._new_session is not None and self._new_session.id == session_id:
            await anyio.to_thread.run_sync(
                store.create, attrs.evolve(self._new_session, messages=tuple(messages))
            )
        else:
            await anyio.to_thread.run_sync(store.append_messages, session_id, messages)


def _notify(hook: Any, **kwargs: Any) -> None:
    try:
        hook(**kwargs)
    except Exception:  # observers must not break requests
        log.exception("an Oblix middleware hook failed")
