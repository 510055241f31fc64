"""The usage ledger: what each answered request used and cost, and what the cloud would have cost.

Every answered request records one :class:`UsageRecord` in the session store's own
ledger (:meth:`SessionStore.usage_ledger`; a store without one gets the SQLite ledger in
``$OBLIX_HOME/usage.sqlite3``). ``oblix usage``, ``GET /v1/oblix/usage``, the dashboard
and budgets (:mod:`oblix_core.request.budgets`) read it through :class:`UsageLedger`.

Prices are USD per million tokens: ``price_in``/``price_out`` of a ``[[models]]`` entry,
else :data:`PRICES` (cloud models), else 0 for local models. Days are UTC dates.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import attrs

from oblix_core.errors import OblixError
from oblix_core.sessions.records import utc_now
from oblix_core.usage.counts import USAGE_ERROR, absent_or_valid, token_count

log = logging.getLogger(__name__)

#: When :data:`PRICES` was read from the providers' public price pages (docs/usage.md).
PRICES_AS_OF = "2025-06-01"
#: USD per million tokens (input, output) of well-known cloud models, by model name (a
#: dated name like ``gpt-4o-mini-2024-07-18`` takes the longest key it starts with).
#: Sources: https://openai.com/api/pricing and https://www.anthropic.com/pricing#api.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-opus-4": (15.00, 75.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
}

#: The most one answer is recorded as costing (USD): a larger or infinite cost counts as this.
MAX_COST_USD = 1e9
#: The groupings ``oblix usage --by`` offers.
GROUPINGS = ("model", "day", "session")
#: The reference cloud model when none is configured or hooked.
DEFAULT_VERSUS = "openai:gpt-4o-mini"


class LedgerDamagedError(OblixError):
    """The usage ledger's file (``path``) is damaged: the message names it and says what to do."""

    def __init__(self, path: object, detail: str) -> None:
        super().__init__(
            f"The usage ledger {path} is damaged ({detail}). Run `oblix usage --repair` to move it "
            "aside and start a fresh ledger with every record still readable (or move the file away "
            "yourself; its spending then no longer counts)."
        )
        self.path = path


class InvalidUsageRecordError(OblixError):
    """A usage record no ledger can take (a count that is no token count, a cost that is no
    finite number >= 0): :func:`check_record`'s error. Writing it again cannot succeed."""


def table_price(model_name: str) -> tuple[float, float] | None:
    """The built-in price of a cloud model name (exact, else the longest matching prefix)."""
    if model_name in PRICES:
        return PRICES[model_name]
    keys = [k for k in PRICES if model_name.startswith(k + "-")]
    return PRICES[max(keys, key=len)] if keys else None


@attrs.define
class Pricing:
    """Prices by model id: configured overrides, the built-in table, 0 for local models."""

    overrides: dict[str, tuple[float, float]] = attrs.field(factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[dict[str, Any]]) -> Pricing:
        """Overrides from ``[[models]]`` entries with ``price_in`` and/or ``price_out``."""
        overrides = {}
        for entry in entries:
            if "price_in" in entry or "price_out" in entry:
                model_id = f"{entry['type']}:{entry['name']}"
                known = table_price(str(entry["name"])) or (0.0, 0.0)
                overrides[model_id] = (
                    float(entry.get("price_in", known[0])),
                    float(entry.get("price_out", known[1])),
                )
        return cls(overrides)

    def price(self, model_id: str, local: bool) -> tuple[float, float] | None:
        """(input, output) USD per million tokens; ``None`` for a cloud model without a price."""
        if model_id in self.overrides:
            return self.overrides[model_id]
        if local:
            return (0.0, 0.0)
        return table_price(model_id.split(":", 1)[-1])

    def cost(self, model_id: str, local: bool, input_tokens: int, output_tokens: int) -> float:
        """The cost in USD (0 for a cloud model without a price, with a warning)."""
        price = self.price(model_id, local)
        if price is None:  # said once per home when the model is hooked, not on every answer
            log.debug("no price for cloud model %s: its cost counts as 0", model_id)
            return 0.0
        cost = (input_tokens * price[0] + output_tokens * price[1]) / 1e6
        # a price like 1e308 (or inf, which [[models]] accepts) must not overflow to a cost the
        # ledger records as 0 (never a finite number): it counts as the most an answer can cost
        return round(cost, 10) if cost < MAX_COST_USD else MAX_COST_USD


@attrs.frozen
class UsageRecord:
    """One answered request in the ledger."""

    request_id: str
    model_id: str
    local: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float
    timestamp: str = attrs.field(factory=utc_now)
    session_id: str | None = None
    cached_tokens: int = 0
    latency_ms: float = 0.0
    rule: str = ""
    reason: str = ""
    tokens_estimated: bool = False
    #: What was wrong with this answer or its counts ("" when nothing was): an endpoint's
    #: invalid counts, or an answer interrupted or abandoned before its end (its tokens are
    #: then estimated from what was streamed).
    error: str = ""

    @property
    def day(self) -> str:
        """The UTC date of the record, ``YYYY-MM-DD``."""
        return self.timestamp[:10]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.define
class UsageTotals:
    """Sums over records: one group of ``oblix usage --by`` (``key`` names it)."""

    key: str = "total"
    requests: int = 0
    local_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0  # the sum; see the report's avg_latency_ms

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        self.local_requests += int(record.local)
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cached_tokens += record.cached_tokens
        self.cost_usd += record.cost_usd
        self.latency_ms += record.latency_ms

    def merge(self, other: UsageTotals) -> None:
        for field in attrs.fields(UsageTotals):
            if field.name != "key":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def group_key(record: UsageRecord, by: str | None) -> str:
    """The group a record falls in for ``by`` (``None``: ``"total"``)."""
    if by == "model":
        return record.model_id
    if by == "day":
        return record.day
    if by == "session":
        return record.session_id or "(no session)"
    return "total"


def total_by(records: Iterable[UsageRecord], by: str | None) -> list[UsageTotals]:
    """Records summed per group (for ledgers that keep records, and for tests)."""
    groups: dict[str, UsageTotals] = {}
    for record in records:
        key = group_key(record, by)
        groups.setdefault(key, UsageTotals(key)).add(record)
    return sorted(groups.values(), key=lambda t: t.key)


class UsageLedger(abc.ABC):
    """Where usage records are kept; shared by every Oblix instance using the same store.

    Methods are synchronous and may block (the core calls them from worker threads) and
    must be safe from several threads. ``since`` is a UTC date: records of that day and
    later count.
    """

    name: str = ""
    #: Whether :meth:`record` may block (I/O). The client wraps a blocking ledger in
    #: :class:`~oblix_core.usage.writer.WriteBehindLedger`, so requests never wait for it.
    blocking: bool = True

    @abc.abstractmethod
    def record(self, record: UsageRecord) -> None:
        """Add one record (a record repeated with the same ``request_id`` may count once)."""

    def record_many(self, records: Sequence[UsageRecord]) -> None:
        """Add several records; ledgers that can write them in one go (a transaction, a
        pipeline) override this."""
        for record in records:
            self.record(record)

    @abc.abstractmethod
    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        """Sums since ``since``, one row per group of ``by`` (``model``, ``day``, ``session``;
        ``None``: a single ``total`` row, present even when empty), sorted by key."""

    @abc.abstractmethod
    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        """USD spent since ``since`` (``None``: ever), by one session when ``session_id`` is given."""

    @abc.abstractmethod
    def recent(self, limit: int = 50) -> list[UsageRecord]:
        """The latest records, newest first (at least the last ``limit`` the ledger keeps)."""

    def repair(self) -> str:
        """Set a damaged ledger right (``oblix usage --repair``) and say what was done; ledgers
        that cannot be damaged that way say so."""
        return f"The {self.name or type(self).__name__} usage ledger has nothing to repair."

    def identity(self) -> str:
        """Names the shared ledger (the same for every instance on the same data)."""
        return f"{self.name}:{id(self)}"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or handles."""


def parse_since(text: str, today: date | None = None) -> date:
    """``7d`` (the last 7 days, today included), ``2w``, ``3m`` (30-day months) or ``YYYY-MM-DD``."""
    today = today or datetime.now(UTC).date()
    if not isinstance(text, str):
        raise OblixError(f"since takes a string like 7d, 2w, 3m or 2025-01-31 (or a date), got {text!r:.60}.")
    value = text.strip().lower()
    units = {"d": 1, "w": 7, "m": 30}
    digits = value[:-1]  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    if value[-1:] in units and digits.isascii() and digits.isdigit() and digits.strip("0"):
        try:
            if len(digits) > 9:  # far past year 1 (and int() refuses over 4,300 digits)
                raise OverflowError
            return today - timedelta(days=int(digits) * units[value[-1]] - 1)
        except OverflowError:  # further back than year 1
            raise OblixError(
                f"--since {text!r:.60} reaches back before the year 1; give fewer days, weeks or months, "
                "or a date like 2025-01-31."
            ) from None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise OblixError(f"--since takes 7d, 2w, 3m or a date like 2025-01-31, got {text!r:.60}.") from None


def _row(totals: UsageTotals, versus: tuple[float, float]) -> dict[str, Any]:
    versus_cost = (totals.input_tokens * versus[0] + totals.output_tokens * versus[1]) / 1e6
    requests = totals.requests
    return {
        "key": totals.key,
        "requests": requests,
        "local_requests": totals.local_requests,
        "cloud_requests": requests - totals.local_requests,
        "local_share": round(totals.local_requests / requests, 4) if requests else 0.0,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost_usd": round(totals.cost_usd, 10),
        "versus_cost_usd": round(versus_cost, 10),
        "saved_usd": round(versus_cost - totals.cost_usd, 10),
        "avg_latency_ms": round(totals.latency_ms / requests, 2) if requests else None,
    }


def usage_report(
    ledger: UsageLedger, since: date, by: str | None, versus: str, pricing: Pricing
) -> dict[str, Any]:
    """What ``oblix usage --json`` and ``GET /v1/oblix/usage`` return.

    ``versus`` is the reference cloud model: ``saved_usd`` is what the same tokens would
    have cost on it, less what they cost.
    """
    if by is not None and by not in GROUPINGS:
        raise OblixError(f"by must be one of {', '.join(GROUPINGS)}, got {by!r}.")
    price = pricing.price(versus, local=False)
    if price is None:
        raise OblixError(
            f"No price is known for the reference model {versus!r}: pick another (--versus) or set "
            "price_in/price_out on its [[models]] entry."
        )
    total = UsageTotals()
    rows = ledger.totals(since, by) if by else []
    for row in rows or ledger.totals(since, None):
        total.merge(row)
    return {
        "since": since.isoformat(),
        "by": by,
        "versus": versus,
        "versus_price_per_million": {"input": price[0], "output": price[1]},
        "prices_as_of": PRICES_AS_OF,
        "total": _row(total, price) | {"key": "total"},
        "rows": [_row(r, price) for r in rows],
    }


def reference_model(models: Sequence[tuple[str, bool]], versus: str | None) -> str:
    """The reference cloud model: ``versus``, else the first cloud one of ``(id, local)``."""
    if versus:
        return versus if ":" in versus else f"openai:{versus}"
    return next((model_id for model_id, local in models if not local), DEFAULT_VERSUS)


def check_record(record: UsageRecord) -> None:
    """Raise :class:`InvalidUsageRecordError` unless ``record``'s counts are token counts and its cost and
    latency finite non-negative numbers: what a ledger checks before it writes anything, so a
    bad record from any caller never poisons a total."""
    for name in ("input_tokens", "output_tokens", "cached_tokens"):
        if token_count(getattr(record, name)) is None:
            raise InvalidUsageRecordError(
                f"Usage record {record.request_id}: {name}={getattr(record, name)!r:.40} is not a token "
                "count (an integer 0..10^9); nothing was written."
            )
    for name in ("cost_usd", "latency_ms"):
        value = getattr(record, name)
        if _amount(value) != value:  # negative, NaN, infinite, not a number
            raise InvalidUsageRecordError(
                f"Usage record {record.request_id}: {name}={value!r} is not a finite number >= 0; "
                "nothing was written."
            )


def _amount(value: Any) -> float:
    """A finite, non-negative float (anything else counts as 0)."""
    if type(value) is float and 0 <= value < math.inf:  # the usual value: no further checks
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else 0.0


def answer_record(
    request: Any,
    model_id: str,
    local: bool,
    metrics: dict[str, Any],
    rule: str,
    reason: str,
    error: str = "",
) -> UsageRecord:
    """The ledger record of an answer (``request``: the core's Request); ``error`` says what
    went wrong with it (interrupted, abandoned), besides any invalid counts in ``metrics``.

    Counts are checked again (:func:`~oblix_core.usage.counts.token_count`): an invalid one is
    recorded as 0 and named in ``error``, never as a negative or failing record.
    """
    get = metrics.get
    problems = [error] if error else []
    if get(USAGE_ERROR):
        problems.append(str(metrics[USAGE_ERROR]))
    inputs, outputs, cached = get("input_tokens"), get("output_tokens"), get("cached_input_tokens")
    invalid = not (
        absent_or_valid(inputs) and absent_or_valid(outputs) and absent_or_valid(cached)
    )  # the usual answer: all valid
    if invalid:  # some count is not a plain int: checked one by one (an int subclass is valid)
        counts, invalid = [], False
        for name, value in zip(_COUNTED, (inputs, outputs, cached), strict=True):
            count = token_count(value)
            if value is not None and count is None:
                invalid = True
                problems.append(f"{name}={value!r:.40} is not a token count")
            counts.append(count)
        inputs, outputs, cached = counts
    inputs, outputs = inputs or 0, outputs or 0
    return UsageRecord(  # positionally, in the fields' order (keywords cost 0.7 µs per answer)
        getattr(request, "usage_id", None) or request.request_id,  # request_id
        model_id,
        local,
        inputs,  # input_tokens
        outputs,  # output_tokens
        _amount(get("cost_usd")),  # cost_usd
        utc_now(),  # timestamp
        request.session_id if request.store else None,  # session_id
        min(cached or 0, inputs),  # cached_tokens
        _amount(get("total_latency_ms") or get("latency_ms")),  # latency_ms
        rule,
        reason[:500],  # reason
        bool(get("tokens_estimated")) or invalid,  # tokens_estimated
        "; ".join(problems)[:500] if problems else "",  # error
    )


#: The token counts of an answer's metrics a usage record takes.
_COUNTED = ("input_tokens", "output_tokens", "cached_input_tokens")
