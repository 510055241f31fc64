"""Local-only: the rule that keeps private conversations on this machine.

:func:`decide` is the one home of the question "is this request local-only, and why?":
the SDK's ``execute``/``stream`` (and so the CLI's ``run``/``chat``, the 0.1.2 names
and ``fallback=True``) ask it once per request, when the session is read; ``oblix
server`` asks it before anything is sent. A request is local-only when it asks
(``local_only=True``), when its session is, or when another source says so (a reason
given in ``sources``: e.g. "it draws on the private document workspace X").

A session is local-only when its metadata has ``local_only`` with any value other than
``false`` (the check fails closed: ``"true"``, ``1``, ``"yes"``, ``null`` all count). A
local-only turn marks its session ``local_only: true`` before any model runs, so a
session that ever held a private turn stays local-only: later requests, copies, exports,
imports and merges (a merge is local-only when any source is) keep it.

Whatever a routing plugin returns, :func:`enforce` drops non-local candidates from a
local-only plan before anything is sent, and the executor refuses to start a non-local
backend for a local-only request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import attrs

from oblix_core.errors import NoModelAvailableError
from oblix_core.request.routing import RoutingPlan
from oblix_core.sessions.records import LOCAL_ONLY_KEY as KEY
from oblix_core.sessions.records import session_is_local_only

__all__ = ["KEY", "NOT_LOCAL_ONLY", "REQUESTED", "LocalOnly", "decide", "enforce", "session_is_local_only"]

#: The reason of a request that asked for it.
REQUESTED = "requested with local_only=True"


class LocalOnly(NamedTuple):
    """The answer of :func:`decide`: whether the request is local-only, and why (``""`` if not)."""

    active: bool
    reason: str


#: The answer of :func:`decide` for the usual request (made once).
NOT_LOCAL_ONLY = LocalOnly(False, "")


def decide(
    requested: bool,
    metadata: dict[str, Any] | None = None,
    *,
    session_id: str | None = None,
    reason: str = "",
    sources: Iterable[str] = (),
) -> LocalOnly:
    """Whether a request is local-only, and why; the first that applies:

    ``requested`` (the caller asked: ``reason``, else :data:`REQUESTED`); the session's
    ``metadata`` (of ``session_id``) marks it local-only; a reason in ``sources``, each a
    further cause that makes the request local-only (in the words shown to the user).
    """
    if requested:
        return LocalOnly(True, reason or REQUESTED)
    if metadata is not None and session_is_local_only(metadata):
        return LocalOnly(
            True,
            f"session {session_id} is local-only (metadata local_only={metadata[KEY]!r}; a session "
            "that ever held a local-only turn stays local-only)",
        )
    source = next(iter(sources), None) if sources else None
    return LocalOnly(True, source) if source is not None else NOT_LOCAL_ONLY


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
