"""Budgets that steer routing: when one is spent, cloud models are unavailable.

``[budgets]`` in ``config.toml`` sets ``daily_usd`` and ``monthly_usd`` (UTC days and
months, every request); a session's metadata ``budget_usd`` limits what that session
spends in all. Spending is read from the usage ledger (:mod:`oblix_core.usage.ledger`), so a
shared store (Redis) shares budgets between hosts.

Each request's budgets are decided once (:meth:`BudgetGuard.decide`), when they first
matter: at planning when the plan's first candidate is a cloud model, else only if the
request falls back to a cloud model. The decision takes this process's gate for the ledger,
then reads the ledger; when a budget is spent the gate goes back and the cloud candidates
are dropped (``routing_decision`` names the budget; a request only the cloud could answer
fails with :class:`BudgetExceededError`); otherwise the request holds the gate until its
usage is recorded. So within a process budget-covered cloud requests run one at a time,
each after reading what the previous one spent, and a budget is overspent by at most one
in-flight request per process — plus any whose reader stalled: the gate's waits are bounded
(``gate_wait``, ``gate_stall``; see :mod:`oblix_core.usage.gate`). Requests answered by a
local model first never wait for the gate nor read the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import attrs

from oblix_core import fields
from oblix_core.errors import NoModelAvailableError
from oblix_core.models.backend import ModelBackend
from oblix_core.request.routing import RoutingPlan
from oblix_core.usage.gate import BudgetGate, gate_for
from oblix_core.usage.ledger import UsageLedger, UsageRecord

log = logging.getLogger(__name__)

#: Session metadata key of a session's own budget (USD, for the session's whole life).
SESSION_KEY = "budget_usd"


def _usd(value: Any) -> Any:
    """A number as a float (what the checks compare); anything else as given, for the rule to refuse."""
    return float(value) if fields.is_number(value) else value


@attrs.frozen
class BudgetSettings:
    """``[budgets]``: ``daily_usd`` and ``monthly_usd`` (``None``: no limit)."""

    daily_usd: float | None = attrs.field(default=None, converter=_usd, validator=fields.USD.or_none())
    monthly_usd: float | None = attrs.field(default=None, converter=_usd, validator=fields.USD.or_none())
    #: Seconds a budgeted cloud request waits for the gate before it fails (oblix_core.usage.gate).
    gate_wait: float = attrs.field(default=120.0, validator=fields.seconds(0, strict=True))
    #: Seconds the gate's holder may wait for a stalled reader before the next request goes ahead.
    gate_stall: float = attrs.field(default=10.0, validator=fields.seconds(0, strict=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetSettings:
        """Settings from a mapping (``[budgets]``); a bad value is a ConfigError naming the key."""
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


@attrs.frozen
class Budget:
    """A spent budget: which, its limit, what was spent and when it resets."""

    name: str
    limit: float
    spent: float
    resets: str
    #: Why the budget cannot be applied (then it counts as spent), e.g. an invalid ``budget_usd``.
    why: str = ""

    def describe(self) -> str:
        if self.why:
            return f"the {self.name} budget cannot be applied ({self.why})"
        return f"the {self.name} budget of ${self.limit:g} is spent (${self.spent:.6g} used; {self.resets})"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class BudgetExceededError(NoModelAvailableError):
    """A request only cloud models could answer, while a budget covering it is spent.

    ``budget`` (a :class:`Budget`) says which budget, how much was spent and when it resets.
    """

    def __init__(self, message: str, budget: Budget) -> None:
        super().__init__(message)
        self.budget = budget


def session_budget(metadata: dict[str, Any] | None) -> float | None:
    """The session's ``budget_usd`` (a number >= 0), else ``None``."""
    value = (metadata or {}).get(SESSION_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def invalid_session_budget(metadata: dict[str, Any] | None) -> str | None:
    """What is wrong with the session's ``budget_usd`` when it is set (not ``None``) but is no
    number >= 0 (``"0.5"``, ``-1``, ``true``): such a budget counts as spent, never as none."""
    value = (metadata or {}).get(SESSION_KEY)
    if value is None or session_budget(metadata) is not None:
        return None
    return (
        f"{SESSION_KEY}={value!r:.40} ({type(value).__name__}) is not a number >= 0; set a number in "
        "the session's metadata"
    )


def spent_budget(
    settings: BudgetSettings,
    ledger: UsageLedger,
    session_id: str | None,
    session_limit: float | None,
    today: date | None = None,
) -> Budget | None:
    """The first spent budget covering a request (blocking: reads the ledger), or ``None``."""
    today = today or datetime.now(UTC).date()
    if settings.daily_usd is not None:
        spent = ledger.spent(since=today)
        if spent >= settings.daily_usd:
            tomorrow = today + timedelta(days=1)
            return Budget("daily", settings.daily_usd, spent, f"resets at {tomorrow.isoformat()}T00:00:00Z")
    if settings.monthly_usd is not None:
        spent = ledger.spent(since=today.replace(day=1))
        if spent >= settings.monthly_usd:
            following = (today.replace(day=28) + timedelta(days=4)).replace(day=1)
            return Budget(
                "monthly", settings.monthly_usd, spent, f"resets at {following.isoformat()}T00:00:00Z"
            )
    if session_limit is not None and session_id is not None:
        spent = ledger.spent(session_id=session_id)
        if spent >= session_limit:
            resets = f"never resets: raise {SESSION_KEY} in the session's metadata"
            return Budget(f"session {session_id}", session_limit, spent, resets)
    return None


class BudgetGuard:
    """One request's budgets: the one decision (gate, then ledger), its screening of the plan,
    recording usage."""

    def __init__(
        self,
        settings: BudgetSettings,
        ledger: UsageLedger | None,
        session_id: str | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.session_id = session_id
        self.session_limit = session_budget(metadata)
        self.session_problem = invalid_session_budget(metadata)
        self.active = ledger is not None and not (
            settings.daily_usd is None
            and settings.monthly_usd is None
            and self.session_limit is None
            and self.session_problem is None
        )
        self._held: BudgetGate | None = None
        self._decided = False

    async def spent(self) -> Budget | None:
        """The spent budget covering this request; a ledger that cannot be read counts as spent."""
        if not self.active or self.ledger is None:
            return None
        if self.session_problem is not None:  # fail closed: the session's limit is unknown
            return Budget(f"session {self.session_id}", 0.0, 0.0, "", why=self.session_problem)
        try:
            return await anyio.to_thread.run_sync(
                spent_budget, self.settings, self.ledger, self.session_id, self.session_limit
            )
        except Exception as exc:  # fail closed: the spending is unknown
            log.warning("cannot read the usage ledger for budgets: %s", exc)
            return Budget("unknown", 0.0, 0.0, f"the usage ledger cannot be read ({exc})")

    async def decide(self) -> Budget | None:
        """This request's budget decision, made once: take this process's gate for the ledger,
        then read it. Spent: the gate goes back and the spent budget is returned; else the
        request holds the gate until :meth:`release` (after its usage is recorded)."""
        if not self.active or self._decided or self.ledger is None:
            return None
        self._decided = True
        gate = gate_for(self.ledger.identity())
        await gate.acquire(self, self.settings.gate_wait, self.settings.gate_stall)
        self._held = gate
        budget = await self.spent()
        if budget is not None:
            self.release()
        return budget

    async def screen(self, plan: RoutingPlan) -> RoutingPlan:
        """``plan`` without cloud candidates when a budget is spent (explained in its decision).

        Decided here when the first candidate is a cloud model (it starts first); a plan led
        by a local model is decided only if a cloud model is reached (:meth:`admit`).
        """
        if not self.active or not plan.candidates or plan.candidates[0].is_local:
            return plan
        budget = await self.decide()
        if budget is None:
            return plan
        kept = tuple(m for m in plan.candidates if m.is_local)
        if not kept:
            raise exceeded(budget, plan.candidates)
        why = f"budget: {budget.describe()}"
        entries = tuple(
            (e | {"status": "skipped", "position": None, "why": why})
            if e.get("status") == "candidate" and not e.get("local")
            else e
            for e in plan.models
        )
        for position, model in enumerate(kept, 1):
            entries = tuple(
                e | {"position": position} if e["model_id"] == model.model_id else e for e in entries
            )
        return attrs.evolve(
            plan,
            candidates=kept,
            reason=f"{plan.reason}; cloud models skipped: {budget.describe()}",
            models=entries,
            notes=(*plan.notes, f"cloud models unavailable: {budget.describe()}"),
        )

    async def admit(self, model: ModelBackend) -> None:
        """Before ``model`` starts: a cloud model reached after local ones (the plan did not
        decide) is decided now; raises :class:`BudgetExceededError` if a budget is spent."""
        if model.is_local or self._decided:
            return
        budget = await self.decide()
        if budget is not None:
            raise exceeded(budget, (model,))

    def record(self, record: UsageRecord | None) -> None:
        """Record the answer's usage now (a failure is logged); the gate stays held.

        The request path calls it (in the worker thread that stores the exchange if the
        ledger blocks), then :meth:`release`.
        """
        if record is not None and record.session_id is None and self.session_limit is not None:
            # store=False on a session with its own budget: the answer is not kept in the session,
            # but what it cost counts against the session's budget (else that budget never closes)
            record = attrs.evolve(record, session_id=self.session_id)
        try:
            if record is not None and self.ledger is not None:
                self.ledger.record(record)
        except Exception as exc:
            log.warning("request %s: its usage was not recorded: %s", record and record.request_id, exc)

    def reader(self, waiting: bool) -> None:
        """The request handed text to its reader (``waiting``), or the reader asked for more."""
        if self._held is not None:
            self._held.reader(self, waiting)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release(self)


def exceeded(budget: Budget, models: Sequence[ModelBackend]) -> BudgetExceededError:
    names = ", ".join(m.model_id for m in models)
    return BudgetExceededError(
        f"Only cloud models ({names}) could answer this request, but {budget.describe()}. Nothing was "
        "sent. Hook a local model, raise the budget, or wait until it resets.",
        budget,
    )
