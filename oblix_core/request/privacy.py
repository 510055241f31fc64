"""Local-only: the rule that keeps private conversations on this machine.

A request is local-only when it asks (``local_only=True``) or when its session is. A
session is local-only when its metadata has ``local_only`` with any value other than
``false`` (the check fails closed: ``"true"``, ``1``, ``"yes"``, ``null`` all count).
A local-only turn marks its session ``local_only: true`` before any model runs, so a
session that ever held a private turn stays local-only: later requests, copies,
exports, imports and merges (a merge is local-only when any source is) keep it.

Whatever a routing plugin returns, :func:`enforce` drops non-local candidates from a
local-only plan before anything is sent, and the executor refuses to start a non-local
backend for a local-only request.
"""

from __future__ import annotations

import attrs

from oblix_core.errors import NoModelAvailableError
from oblix_core.request.routing import RoutingPlan
from oblix_core.sessions.records import LOCAL_ONLY_KEY as KEY
from oblix_core.sessions.records import session_is_local_only

__all__ = ["KEY", "enforce", "session_is_local_only"]


def enforce(plan: RoutingPlan, local_only: bool, reason: str) -> RoutingPlan:
    """``plan`` without its non-local candidates when the request is local-only."""
    if not local_only:
        return plan
    local = tuple(m for m in plan.candidates if m.is_local)
    dropped = [m.model_id for m in plan.candidates if not m.is_local]
    if not local:
        raise NoModelAvailableError(
            f"This request is local-only ({reason}) but the routing plan holds no local model "
            f"({', '.join(dropped) or 'no candidate'}); nothing was sent. Hook a local model "
            "(llama.cpp or Ollama)."
        )
    if not dropped:
        return plan
    return attrs.evolve(
        plan,
        candidates=local,
        reason=f"{plan.reason}; cloud models removed because the request is local-only ({reason}): "
        + ", ".join(dropped),
    )
