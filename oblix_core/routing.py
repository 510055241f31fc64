"""Routing: turn agent checks and hooked models into an ordered list of candidates.

The default policy (below, registered as the last ``oblix_route`` implementation)
applies these rules, first match wins:

1. ``explicit``      -- the request names a model (``model="openai:gpt-4o-mini"``): only it.
2. ``local-only``    -- the request (``local_only=True``) or the session metadata
   (``"local_only": true``) forbids the cloud: local models only; none hooked is an error.
3. ``disconnected``  -- an agent reports ``DISCONNECTED``: local models only (cloud models
   are tried only when no local model is hooked).
4. ``local-constrained`` -- an agent reports ``CRITICAL`` or ``CONSTRAINED`` local resources:
   cloud models first, local ones as fallbacks.
5. ``network-degraded`` -- an agent reports ``DEGRADED`` connectivity: local models first.
6. ``agent-target``  -- an agent (e.g. a custom one) in a state of its own (not ``AVAILABLE``,
   ``OPTIMAL``, ``IDLE``, ``PENDING`` or ``ERROR``) suggests a target (``CLOUD`` or
   ``LOCAL*``): that kind first. Targets on those nominal states only inform.
7. ``preference``    -- otherwise the configured preference, ``local-first`` (default) or
   ``cloud-first``.

Within each group, models keep the order in which they were hooked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from oblix_core.agents import NOMINAL_STATES, AgentCheck, AgentState, Target
from oblix_core.errors import ConfigError, NoModelAvailableError
from oblix_core.hookspecs import hookimpl
from oblix_core.models import ModelBackend

PREFERENCES = ("local-first", "cloud-first")


@attrs.frozen
class RouteRequest:
    """What the policy knows about a request."""

    preference: str = "local-first"
    local_only: bool = False
    local_only_reason: str = ""
    model: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.preference not in PREFERENCES:
            raise ConfigError(f"Unknown routing preference {self.preference!r}; use one of {PREFERENCES}.")


@attrs.frozen
class RoutingPlan:
    """Ordered candidates and why. ``policy`` names who decided."""

    candidates: tuple[ModelBackend, ...]
    rule: str
    reason: str
    policy: str = "default"

    def decision(self) -> dict[str, Any]:
        """The ``routing_decision`` of a result: rule, human-readable reason, candidates."""
        return {
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "candidates": [m.model_id for m in self.candidates],
        }


def _split(models: Sequence[ModelBackend]) -> tuple[list[ModelBackend], list[ModelBackend]]:
    return [m for m in models if m.is_local], [m for m in models if not m.is_local]


def _describe(check: AgentCheck) -> str:
    return f"{check.agent}={check.state}" + (f" ({check.reason})" if check.reason else "")


def default_policy(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """The built-in routing policy (see the module docstring for its rules)."""
    if not models:
        raise NoModelAvailableError(
            "No model is hooked. Hook one first, e.g. await client.hook_model(ModelType.LLAMA_CPP, "
            "'gemma-3-270m'), or configure one in $OBLIX_HOME/config.toml."
        )
    local, cloud = _split(models)
    if request.model:
        chosen = [m for m in models if m.model_id == request.model]
        if not chosen:
            hooked = ", ".join(m.model_id for m in models)
            raise NoModelAvailableError(f"Model {request.model!r} is not hooked (hooked: {hooked}).")
        if request.local_only and not chosen[0].is_local:
            raise NoModelAvailableError(
                f"Model {request.model!r} is a cloud model but this request is local-only "
                f"({request.local_only_reason}); nothing was sent."
            )
        return RoutingPlan(tuple(chosen), "explicit", f"model {request.model} requested explicitly")
    if request.local_only:
        if not local:
            raise NoModelAvailableError(
                f"This request is local-only ({request.local_only_reason}) but no local model is "
                "hooked; nothing was sent. Hook a local model (llama.cpp or Ollama)."
            )
        return RoutingPlan(tuple(local), "local-only", f"local-only: {request.local_only_reason}")

    def by_state(*states: str) -> list[AgentCheck]:
        return [c for c in checks if c.state in states]

    if down := by_state(AgentState.DISCONNECTED):
        why = "; ".join(map(_describe, down))
        if local:
            return RoutingPlan(
                tuple(local), "disconnected", f"network disconnected: {why}; local models only"
            )
        return RoutingPlan(
            tuple(cloud), "disconnected", f"network disconnected: {why}; no local model, trying cloud anyway"
        )
    if busy := by_state(AgentState.CRITICAL, AgentState.CONSTRAINED):
        why = "; ".join(map(_describe, busy))
        return RoutingPlan(
            tuple(cloud + local), "local-constrained", f"local resources busy: {why}; cloud first"
        )
    if slow := by_state(AgentState.DEGRADED):
        why = "; ".join(map(_describe, slow))
        return RoutingPlan(tuple(local + cloud), "network-degraded", f"network degraded: {why}; local first")
    for check in (c for c in checks if c.state not in NOMINAL_STATES):
        if check.target == Target.CLOUD:
            return RoutingPlan(tuple(cloud + local), "agent-target", f"{check.agent} suggests CLOUD")
        if check.target and check.target.startswith(Target.LOCAL):
            return RoutingPlan(tuple(local + cloud), "agent-target", f"{check.agent} suggests {check.target}")
    states = ", ".join(_describe(c) for c in checks) or "no agents"
    if request.preference == "cloud-first":
        return RoutingPlan(tuple(cloud + local), "preference", f"cloud-first preference ({states})")
    return RoutingPlan(tuple(local + cloud), "preference", f"local-first preference ({states})")


@hookimpl(trylast=True)
def oblix_route(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """The core's default policy, consulted when no plugin decided."""
    return default_policy(request, models, checks)
