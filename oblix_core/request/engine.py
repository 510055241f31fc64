"""The engine: what the request path needs from a client, and nothing else."""

from __future__ import annotations

import logging
from typing import Any

import attrs

from oblix_core.agents import AgentCheck, BaseAgent
from oblix_core.models.backend import ModelBackend
from oblix_core.request.budgets import BudgetSettings
from oblix_core.request.execution import Executor
from oblix_core.request.hooks import request_hooks
from oblix_core.request.warm import WarmHistory
from oblix_core.sessions.idempotency import IdempotencyRecords
from oblix_core.sessions.store import SessionStore
from oblix_core.usage.ledger import Pricing, UsageLedger

log = logging.getLogger(__name__)


@attrs.define
class Engine:
    """The store, hooks, executor, hooked models and agents, and the routing preference.

    The client owns one and keeps its ``models``/``agents`` up to date; each request
    takes a snapshot of them when it starts, so hooking or unhooking a model never
    changes a request in flight.
    """

    store: SessionStore
    #: pluggy's HookRelay of the client's plugin manager, unimplemented hooks skipped (RequestHooks)
    hooks: Any = attrs.field(converter=request_hooks)
    executor: Executor
    preference: str
    models: dict[str, ModelBackend] = attrs.field(factory=dict)
    agents: dict[str, BaseAgent] = attrs.field(factory=dict)
    #: Usage: prices, the ledger answers are recorded in (``None``: not recorded), budgets.
    pricing: Pricing = attrs.field(factory=Pricing)
    ledger: UsageLedger | None = None
    budgets: BudgetSettings = attrs.field(factory=BudgetSettings)
    #: Each active session's recent history, kept warm between requests.
    history: WarmHistory = attrs.field(factory=WarmHistory)
    #: Results of requests sent with an idempotency key (``None``: keys are not honoured).
    idempotency: IdempotencyRecords | None = None

    def model_snapshot(self) -> list[ModelBackend]:
        return list(self.models.values())

    def agent_checks(self) -> list[AgentCheck]:
        """Each agent's latest check (cached; never waits on a probe)."""
        return [agent.latest() for agent in self.agents.values()]


def notify(hook: Any, **kwargs: Any) -> None:
    """Call every implementation of an observer hook on its own.

    A failing implementation is logged with its plugin's name and does not stop the
    others (pluggy itself would stop at the first one that raises).
    """
    for impl in reversed(hook.get_hookimpls()):  # pluggy's own order: last registered first
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception:
            log.exception("plugin %r failed in %s; other observers still run", impl.plugin_name, hook.name)
