"""One request end to end: history, middleware, routing, execution, persistence."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import anyio
import attrs

from oblix_core.agents import current_checks
from oblix_core.documents import retrieval
from oblix_core.errors import ExchangeNotStoredError, NoModelAvailableError, StreamInterruptedError
from oblix_core.request import privacy, routing
from oblix_core.request.budgets import BudgetGuard
from oblix_core.request.context import Request
from oblix_core.request.engine import Engine, notify
from oblix_core.request.execution import Attempting, Done
from oblix_core.request.history import CountedHistory, session_messages
from oblix_core.request.idempotency import Once, exchange_ids, request_fields, session_id_for
from oblix_core.request.routing import RoutingPlan
from oblix_core.sessions.records import Message, SessionRecord, new_session_id, utc_now
from oblix_core.sessions.store import keyed
from oblix_core.usage.ledger import UsageRecord, answer_record
from oblix_core.usage.spending import Spending

#: A history longer than this is turned into model messages in a worker thread, so a request
#: of thousands of messages never holds the event loop (``/health`` stays quick under load).
LONG_HISTORY = 256


async def off_loop_if_long(work: Callable[..., Any], items: Any, *, size: int | None = None) -> Any:
    """``work(items)``, in a worker thread when there are more than :data:`LONG_HISTORY` items."""
    if (len(items) if size is None else size) > LONG_HISTORY:
        return await anyio.to_thread.run_sync(work, items)
    return work(items)


def _as_messages(history: Any) -> tuple[Message, ...]:
    return tuple(Message(m.role, m.content) for m in history)


#: Tokens of history read for a request when no model is hooked (routing then fails anyway).
DEFAULT_HISTORY_BUDGET = 4096


class ResponseStream:
    """An async iterator over the answer's text chunks, for programs.

    ``async for chunk in client.stream("Hi", session_id=sid): ...``; after the loop,
    :attr:`result` holds the same dict ``execute`` returns. Leaving the loop early (or
    cancelling) stops the model promptly; an unfinished answer is not stored.
    """

    def __init__(self, engine: Engine, request: Request) -> None:
        self._engine = engine
        self.request = request
        self._agen: AsyncGenerator[str, None] | None = None
        self._new_session: SessionRecord | None = None
        self.result: dict[str, Any] | None = None
        self._planned: RoutingPlan | None = None  # the screened plan, once routed
        self._decision: dict[str, Any] | None = None  # its routing decision, made when first read
        self._delivered: list[str] = []
        self._started_at = utc_now()
        self._answering: str | None = None  # the model being tried now
        self._stored = False
        self._budget: BudgetGuard | None = None
        self._history: CountedHistory | None = None  # the session's, as chat messages
        #: Where the warm history lies in ``request.messages`` while nothing but this class
        #: changed them (middleware may): what the fits take their counts from.
        self._counted: tuple[int, CountedHistory] | None = None
        self._once: Once | None = None  # the claim on the request's idempotency key

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def routing_decision(self) -> dict[str, Any] | None:
        """The ``routing_decision`` once the request is routed (attempts added when it ends,
        also when it fails): what ``oblix run --explain`` and chat ``/why`` print. Made from
        the plan when first read (a request nobody asks about mid-way builds it once, at the end)."""
        if self._decision is None and self._planned is not None:
            request = self.request
            self._decision = self._planned.decision() | {
                "selected": None,
                "local_only": {"active": request.local_only, "reason": request.local_only_reason},
                "attempts": [],
            }
        return self._decision

    @property
    def answering_model_id(self) -> str | None:
        """The model being tried now; once text has arrived, the model that answers."""
        return self._answering

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> str:
        if self._agen is None:
            self._agen = self._run()
        text = await self._agen.__anext__()
        self._delivered.append(text)
        return text

    @property
    def delivered(self) -> str:
        """The answer text handed to the caller so far."""
        return "".join(self._delivered)

    async def recorded(self) -> None:
        """Wait until this answer's usage record is written to the ledger, not only queued.

        The ledger writes behind the request path (:mod:`oblix_core.usage.writer`): a process
        killed right after an answer could lose its record. A caller that acknowledges the
        answer to another party awaits this first (``oblix server`` does, before an answer's
        end goes out); the writes of concurrent answers are shared (one transaction for all
        that are queued).
        """
        flush = getattr(self._engine.ledger, "flush", None)
        if flush is not None:
            await anyio.to_thread.run_sync(flush)

    async def store_interrupted(self, reason: str) -> bool:
        """Store the prompt and the part of the answer delivered so far, marked interrupted.

        For a caller that stops reading on purpose (the CLI on Ctrl-C), after it closed
        the stream: the core itself stores partials only when a model fails. The
        assistant message has ``metrics={"interrupted": True, "reason": reason}`` and the
        answering model's id. Returns ``False``, storing
        nothing, when no text was delivered, the exchange is already stored, or the
        request stores nothing.
        """
        request = self.request
        if self._stored or not self._delivered or request.session_id is None or not request.store:
            return False
        marks = {"interrupted": True, "reason": reason}
        await self._persist(self._started_at, self.delivered, self._answering, marks)
        return True

    async def aclose(self) -> None:
        if self._agen is not None:
            await self._agen.aclose()

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def collect(self) -> dict[str, Any]:
        """Consume the whole answer and return the result dict."""
        if self._agen is None:
            self._agen = self._run()
        agen, delivered = self._agen, self._delivered
        try:  # what __anext__ does per chunk, without its extra coroutine per chunk
            async for text in agen:
                delivered.append(text)
        finally:
            await agen.aclose()
        assert self.result is not None
        return self.result

    async def _session(self) -> SessionRecord:
        """The session's recent history; a new session (stored only once answered) if none given."""
        request = self.request
        if request.session_id is None and request.idempotency_key and request.store:
            derived = session_id_for(request.request_id)
            if await anyio.to_thread.run_sync(self._engine.store.exists, derived):
                request.session_id = derived  # an earlier try of this request stored it
        if request.session_id is None:
            self._decide_privacy(None)
            now = utc_now()
            metadata = {privacy.KEY: True} if request.local_only else {}
            history = await off_loop_if_long(_as_messages, request.history or ())
            new_id = session_id_for(request.request_id) if request.idempotency_key else new_session_id()
            if request.store:  # the store must be reachable before a model spends time on an answer
                await anyio.to_thread.run_sync(self._engine.store.exists, new_id)
            self._new_session = SessionRecord(
                id=new_id,
                title=request.prompt.strip().splitlines()[0][:60],
                created_at=now,
                updated_at=now,
                messages=history,
                metadata=metadata,
            )
            return self._new_session
        windows = [m.context_window for m in self._engine.models.values()]
        budget = max(windows) if windows else DEFAULT_HISTORY_BUDGET
        store = self._engine.store
        read = functools.partial(self._engine.history.read, store, request.session_id, budget)
        session, self._history = await anyio.to_thread.run_sync(read) if store.blocking else read()
        self._decide_privacy(session)
        if request.local_only and not privacy.session_is_local_only(session.metadata):
            # mark the session before any model runs: once private, always private
            mark = functools.partial(store.update_metadata, session.id, {privacy.KEY: True})
            await anyio.to_thread.run_sync(mark) if store.blocking else mark()
        return session

    def _decide_privacy(self, session: SessionRecord | None) -> None:
        """Whether the request is local-only, and why: :func:`privacy.decide`, once per request."""
        request = self.request
        request.local_only, request.local_only_reason = privacy.decide(
            request.local_only,
            session.metadata if session is not None else None,
            session_id=session.id if session is not None else None,
            reason=request.local_only_reason,
            sources=request.local_only_sources,  # e.g. a private document workspace
        )

    def _apply_session(self, session: SessionRecord) -> None:
        request = self.request
        request.session_id = session.id
        if request.history is not None and self._new_session is not None:
            # the caller's own messages, as given (tool calls and results included)
            framing = session_messages(attrs.evolve(session, messages=()), request.prompt, request.system)
            request.messages = [*framing[:-1], *request.history, framing[-1]]
        else:
            history = self._history
            request.messages = session_messages(session, request.prompt, request.system, history)
            if history is not None:
                self._counted = (len(request.messages) - 1 - len(history), history)

    async def _plan(self) -> tuple[RoutingPlan, list[Any]]:
        """Agents' readings (a bounded fresh sample if pending), the policy, privacy, screening."""
        engine, request = self._engine, self.request
        if self._once is not None:
            self._once.ran = True  # from here a model may run: a failure releases the claim
        executor = engine.executor
        checks, agents = await current_checks(list(engine.agents.values()), executor.readings)
        models = engine.model_snapshot()
        await executor.watch(models)
        route = routing.route_request(
            request.preference or engine.preference,
            request.local_only,
            request.local_only_reason,
            request.model,
            request.fallback,
        )
        plan = routing.route(engine.hooks.oblix_route, route, models, checks)
        plan = privacy.enforce(plan, request.local_only, request.local_only_reason)
        if request.options.get("tools"):
            plan = _tool_capable(plan)
        plan = executor.screen(
            plan,
            models,
            request,
            forced=request.model,
            fallback=request.fallback,
            agents=agents,
            history=self._counted,
        )
        if self._budget is not None and self._budget.active:
            plan = await self._budget.screen(plan)
        self._planned = plan
        return plan, checks

    async def _run(self) -> AsyncGenerator[str, None]:
        started_at, started = self._started_at, time.monotonic()
        hooks = self._engine.hooks
        try:
            # the request as the caller sent it (only a request with a key is compared with its tries)
            fields = request_fields(self.request) if self.request.idempotency_key else {}
            if self.request.retrieval is not None:  # documents: search once, before privacy and routing
                await retrieval.apply(self.request)
            engine = self._engine
            once = self._once = (  # claimed first: the claim sets the request id
                await Once.start(engine.idempotency, self.request, fields, engine.executor.settings)
                if self.request.idempotency_key is not None and engine.idempotency is not None
                else None  # as Once.start says for a request without a key: a coroutine call fewer
            )
            session = await self._session()
            if self._history is None and len(session.messages) > LONG_HISTORY:  # made one by one
                await off_loop_if_long(self._apply_session, session, size=len(session.messages))
            else:  # a warm history is chat messages already: a list is extended, on the loop
                self._apply_session(session)
            if once is not None:
                await once.recover(session)
                if once.replay is not None:  # an earlier try answered: nothing runs, stores or counts
                    await self._replayed(once.replay)
                    if once.replay["response"]:  # an answer made only of tool calls has no text
                        yield once.replay["response"]
                    return
            budget = self._budget = BudgetGuard(
                engine.budgets, engine.ledger, self.request.session_id, session.metadata
            )
            if hooks.oblix_request_start.get_hookimpls():
                self._middleware()
            plan, checks = await self._plan()
            done: Done | None = None
            try:
                spending = Spending.of(budget, engine.pricing, self.request, plan)
                run = engine.executor.run(plan.candidates, self.request, plan.fits, spending)
                async with aclosing(run) as events:
                    async for event in events:
                        if isinstance(event, Attempting):
                            if budget.active:  # no budget set: nothing to decide
                                await budget.admit(event.model)
                            self._answering = event.model.model_id
                        elif isinstance(event, Done):
                            done = event
                        else:
                            if once is not None:
                                await once.renew()
                            yield event
            except StreamInterruptedError as exc:  # store what was said, marked, then re-raise
                marks = {"interrupted": True, "error": str(exc)}
                await self._persist(started_at, exc.partial, exc.model_id, marks)
                raise
            await self._finish(done, plan, checks, started)
        except BaseException as exc:
            await self._failed(exc)
            raise
        notify(hooks.oblix_request_end, request=self.request, result=self.result)

    def _middleware(self) -> None:
        """``oblix_request_start``'s implementations run: they may edit the messages (fitted then
        as they are, not from the warm history's counts) and make the request local-only, never
        the reverse."""
        request = self.request
        private = (request.local_only, request.local_only_reason)
        self._counted = None
        self._engine.hooks.oblix_request_start(request=request)
        if private[0]:
            request.local_only, request.local_only_reason = private

    async def _failed(self, exc: BaseException) -> None:
        """After the request failed (or was cancelled or closed): the budget gate released, the
        idempotency claim finished, the attempts in the decision, the error hooks told."""
        if self._budget is not None:
            self._budget.release()
        if self._once is not None:  # released unless the complete exchange was stored
            with anyio.CancelScope(shield=True):
                await self._once.finish(self.result)
        if isinstance(exc, NoModelAvailableError) and self.routing_decision is not None:
            self.routing_decision["attempts"] = list(exc.attempts)
        if isinstance(exc, Exception):
            notify(self._engine.hooks.oblix_request_error, request=self.request, error=exc)

    async def _finish(self, done: Done | None, plan: RoutingPlan, checks: list[Any], started: float) -> None:
        """The answer's metrics and usage recorded, the exchange stored, the gate released, the
        result built (and kept under the request's idempotency key)."""
        assert done is not None
        engine, model = self._engine, done.model
        metrics = done.metrics  # the executor's own dict for this answer: completed in place
        metrics["total_latency_ms"] = round((time.monotonic() - started) * 1000, 2)
        if done.tool_calls:
            metrics["tool_calls"] = [dict(c) for c in done.tool_calls]
        metrics["cost_usd"] = engine.pricing.cost(
            model.model_id, model.is_local, metrics["input_tokens"], metrics["output_tokens"]
        )
        usage = answer_record(self.request, model.model_id, model.is_local, metrics, plan.rule, plan.reason)
        if self._once is not None:  # a retry may have taken the claim over while the reader stalled
            spent = Spending.of(self._budget, engine.pricing, self.request, plan).spent
            lost = None if model.is_local else functools.partial(spent, model, metrics, "superseded")
            await self._once.confirm(lost)  # what this try spent is recorded, then it fails
            usage = self._once.account(usage, metrics)
        await self._persist(self._started_at, done.text, model.model_id, metrics, usage)
        if self._budget is not None:
            self._budget.release()
        self.result = self._result(done, metrics, plan, checks)
        if self._once is not None:
            await self._once.finish(self.result)

    async def _replayed(self, replay: dict[str, Any]) -> None:
        """The result of an earlier try is this request's: usage offered again, hooks told."""
        self.result = replay
        await self._offer_usage(replay)
        notify(self._engine.hooks.oblix_request_replayed, request=self.request, result=replay)

    async def _offer_usage(self, result: dict[str, Any] | None) -> None:
        """Offer a replayed answer's usage record to the ledger again: the ledger keeps one record
        per request id, and the process that answered first may have been killed before its
        write-behind record reached the ledger."""
        ledger, model_id = self._engine.ledger, (result or {}).get("model_id")
        if ledger is None or result is None or not model_id:
            return
        model = self._engine.models.get(model_id)
        metrics = result["metrics"]
        local = model.is_local if model is not None else not metrics.get("cost_usd")
        usage = answer_record(self.request, model_id, local, metrics, "replay", "recovered after a crash")
        usage = attrs.evolve(usage, request_id=metrics.get("usage_id") or usage.request_id)
        await anyio.to_thread.run_sync(ledger.record, usage) if ledger.blocking else ledger.record(usage)

    def _result(
        self, done: Done, metrics: dict[str, Any], plan: RoutingPlan, checks: list[Any]
    ) -> dict[str, Any]:
        request = self.request
        # the screened plan is this request's own, read here last: its entries need no copies
        decision = (self._decision or plan.decision(copy=False)) | {
            "selected": done.model.model_id,
            "local_only": {"active": request.local_only, "reason": request.local_only_reason},
            "attempts": [a.to_dict() for a in done.attempts],
        }
        self._decision = decision
        extra = {"tool_calls": [dict(c) for c in done.tool_calls]} if done.tool_calls else {}
        if request.retrieval is not None:  # documents: which chunks the answer drew on
            extra["sources"] = list(request.sources)
        return extra | {
            "response": done.text,
            "model_id": done.model.model_id,
            "session_id": request.session_id,
            "request_id": request.request_id,
            "metrics": metrics,
            "agent_checks": {c.agent: c.to_dict() for c in checks},
            "routing_decision": decision,
        }

    async def _persist(
        self,
        started_at: str,
        text: str,
        model_id: str | None,
        metrics: dict[str, Any],
        usage: UsageRecord | None = None,
    ) -> None:
        """Record the answer's ``usage`` and store the exchange (one worker-thread hop for the
        blocking I/O, none if nothing blocks); if storing fails, say so (the answer exists,
        the session lacks it)."""
        request, budget = self.request, self._budget
        assert request.session_id is not None
        if request.retrieval is not None:  # documents: the sources stay with the exchange
            metrics = metrics | {"sources": list(request.sources)}
        record = budget.record if budget is not None and usage is not None else None
        ledger = self._engine.ledger
        if record is not None and not (ledger is not None and ledger.blocking):
            record(usage)  # first: an answer that is not stored still counts
            record = None
        answered_at = usage.timestamp if usage is not None else None  # one clock read for both
        write = self._writer(started_at, text, model_id, metrics, answered_at) if request.store else None
        if write is None and record is None:
            return

        def persist() -> bool:
            if record is not None:
                record(usage)
            if write is None:
                return False
            try:
                write()
            except Exception as exc:  # whatever the store raised, the caller learns it was not stored
                raise ExchangeNotStoredError(
                    f"The answer from {model_id} was produced but NOT stored in session "
                    f"{request.session_id}: {exc}",
                    answer=text,
                ) from exc
            return True

        blocking = record is not None or (write is not None and self._engine.store.blocking)
        self._stored = await anyio.to_thread.run_sync(persist) if blocking else persist()
        if self._stored and usage is not None and self._once is not None:
            self._once.stored = True  # the complete exchange (a partial has no usage here)
        if self._stored and self._new_session is not None and self._new_session.id == request.session_id:
            self._new_session = None

    def _writer(
        self,
        started_at: str,
        text: str,
        model_id: str | None,
        metrics: dict[str, Any],
        answered_at: str | None = None,
    ) -> Callable[[], None]:
        """The store write of this exchange: the new session created with it, or an append
        (``answered_at``: the answer's time, as its usage record has it; else now)."""
        request, store, new = self.request, self._engine.store, self._new_session
        partial = bool(metrics.get("interrupted"))
        asked, answered, write_key = exchange_ids(request.request_id, bool(request.idempotency_key), partial)
        messages = [  # positionally: role, content, id, timestamp, model_id, metrics
            Message("user", request.prompt, asked, started_at),
            Message("assistant", text, answered, answered_at or utc_now(), model_id, metrics),
        ]
        if new is not None and new.id == request.session_id:
            record = attrs.evolve(new, messages=(*new.messages, *messages))
            return functools.partial(keyed(store.create, write_key), record)
        return functools.partial(keyed(store.append_messages, write_key), request.session_id, messages)


def _tool_capable(plan: RoutingPlan) -> RoutingPlan:
    """``plan`` with only the models that can call tools (a request with tools needs one)."""
    capable = tuple(m for m in plan.candidates if m.supports_tools)
    if not capable:
        raise NoModelAvailableError(
            "This request has tools but no candidate model can call tools ("
            + ", ".join(m.model_id for m in plan.candidates)
            + "); nothing was sent. Hook an OpenAI-compatible model, or send it without tools."
        )
    if len(capable) == len(plan.candidates):
        return plan
    dropped = ", ".join(m.model_id for m in plan.candidates if not m.supports_tools)
    return attrs.evolve(plan, candidates=capable, reason=f"{plan.reason}; without tool support: {dropped}")
