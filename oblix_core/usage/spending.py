"""What one request's answer spends, told by the executor while it runs.

The request path gives the executor a :class:`Spending` for each request. The executor calls

* :meth:`Spending.spent` when a cloud model produced part of an answer that ends without
  completing — interrupted by a failure, or abandoned because the reader stopped (closed the
  stream, was cancelled, or its HTTP client hung up). The answer's usage is recorded (tokens
  estimated from what was streamed where the provider's count never came) and counts
  against budgets, like a whole answer's. Its record's id is the request's id with
  ``.interrupted-<hex>`` or ``.abandoned-<hex>`` added, so a retry of the same request (an
  idempotency key keeps its id) that does answer is counted too, not dropped as a repeat;
* :meth:`Spending.reader` around each hand-over of text to the reader, so the budget gate
  (:mod:`oblix_core.usage.gate`) knows when its holder is waiting for a stalled reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from oblix_core.models.backend import ModelBackend
from oblix_core.sessions.records import random_hex
from oblix_core.usage.ledger import Pricing, UsageRecord, answer_record


def _nothing(_waiting: bool) -> None:
    return None


@attrs.define
class Spending:
    """One request's channel from the executor to its ledger and budget gate."""

    #: Records a usage record without blocking (the budget guard's ``record``).
    record: Callable[[UsageRecord], None]
    pricing: Pricing
    #: The core's Request (its id and session).
    request: Any
    rule: str = ""
    reason: str = ""
    #: Told ``True`` when text was handed to the reader, ``False`` when it asks for more.
    reader: Callable[[bool], None] = _nothing

    @classmethod
    def of(cls, budget: Any, pricing: Pricing, request: Any, plan: Any) -> Spending:
        """For ``request`` routed by ``plan`` (its rule and reason), recorded through ``budget``
        (a :class:`~oblix_core.request.budgets.BudgetGuard`: its ``record`` and ``reader``)."""
        return cls(budget.record, pricing, request, plan.rule, plan.reason, budget.reader)

    def spent(self, model: ModelBackend, metrics: dict[str, Any], why: str) -> None:
        """Record the usage of ``model``'s unfinished answer (``metrics``: the executor's)."""
        cost = self.pricing.cost(
            model.model_id, model.is_local, int(metrics["input_tokens"]), int(metrics["output_tokens"])
        )
        metrics = metrics | {"cost_usd": cost}
        record = answer_record(
            self.request, model.model_id, model.is_local, metrics, self.rule, self.reason, why
        )
        kind = why.split(":", 1)[0]
        self.record(attrs.evolve(record, request_id=f"{record.request_id}.{kind}-{random_hex()[:8]}"))
