"""Which rule routed a request and which model is answering it, known before the answer ends.

A streamed response must send ``X-Oblix-Model`` and ``X-Oblix-Route`` with its first
byte, before the core's result exists. The server sets a :class:`Trace` in a context
variable for each request; a hook wrapper around ``oblix_route`` records the rule that
fired, and each hooked model's ``stream`` is wrapped to record the model as its attempt
starts. The core runs a request's routing and models in the task that iterates its
:class:`~oblix_core.conversation.ResponseStream`, so the variable is the request's own.
After the first token no other model can take over (the executor's rule), so the model
recorded then is the model that answers.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

import attrs

from oblix_core import hookimpl
from oblix_core.models import GenerationRequest, ModelBackend
from oblix_core.routing import RoutingPlan

_current: ContextVar[Trace | None] = ContextVar("oblix_server_trace", default=None)


@attrs.define
class Trace:
    """What the server learns about a request while it runs."""

    rule: str | None = None
    model_id: str | None = None


def start_trace() -> Trace:
    """A new trace for the request running in this task."""
    trace = Trace()
    _current.set(trace)
    return trace


class TracePlugin:
    """Registered on the server's client: records each request's routing rule."""

    @hookimpl(wrapper=True)
    def oblix_route(
        self, request: Any, models: Sequence[ModelBackend], checks: Sequence[Any]
    ) -> Generator[None, RoutingPlan | None, RoutingPlan | None]:
        plan = yield
        trace = _current.get()
        if trace is not None and plan is not None:
            trace.rule = plan.rule
        return plan


def trace_models(models: Iterable[ModelBackend]) -> None:
    """Wrap each model's ``stream`` so that starting an attempt records the model."""
    for model in models:
        if getattr(model, "_oblix_server_traced", False):
            continue
        original = model.stream

        def stream(
            request: GenerationRequest, _model: ModelBackend = model, _original: Any = original
        ) -> Any:
            trace = _current.get()
            if trace is not None:
                trace.model_id = _model.model_id
            return _original(request)

        model.stream = stream  # type: ignore[method-assign]
        model._oblix_server_traced = True  # type: ignore[attr-defined]
