"""A ``routing_decision`` as text: what ``oblix run --explain`` and chat ``/why`` print."""

from __future__ import annotations

from typing import Any


def _context(fit: dict[str, Any] | None) -> str:
    if not fit:
        return ""
    text = f"context {fit['needed']}/{fit['window']} tokens"
    if fit["history_messages"]:
        text += f", history {fit['history_sent']}/{fit['history_messages']} messages"
    return text


def _load(load: dict[str, Any] | None) -> str:
    if not load:
        return ""
    parts = []
    if load.get("warming"):
        parts.append("warming up")
    if load.get("busy"):
        parts.append(f"busy ({load.get('queue_depth', 0)} running or queued)")
    if load.get("last_tokens_per_second"):
        parts.append(f"last {load['last_tokens_per_second']:g} tok/s")
    return ", ".join(parts)


def _model_line(entry: dict[str, Any]) -> str:
    kind = "local" if entry.get("local") else "cloud"
    facts = [f for f in (_context(entry.get("context")), _load(entry.get("load"))) if f]
    line = f"{entry['model_id']} ({kind})"
    if facts:
        line += f" [{'; '.join(facts)}]"
    health = entry.get("health")
    why = entry.get("why", "")
    if health and entry.get("status") == "candidate":
        why += f"; cooling down ({health['reason']}), tried as a last resort"
    return f"{line}: {why}" if why else line


def _agent_line(agent: dict[str, Any]) -> str:
    source = {
        "background": "background sample",
        "fresh": "fresh sample",
        "persisted": "persisted reading",
        "none": "no reading: not used",
    }.get(agent.get("source", ""), agent.get("source", ""))
    age = f", {agent['age_s']:g}s old" if agent.get("age_s") is not None else ""
    reason = f" - {agent['reason']}" if agent.get("reason") else ""
    return f"  {agent['agent']}: {agent['state']}{reason} ({source}{age})"


def _attempt_line(number: int, attempt: dict[str, Any]) -> str:
    took = f"{attempt.get('elapsed_ms', 0):g} ms"
    if attempt.get("error"):
        return f"  {number}. {attempt['model_id']} failed after {took}: {attempt['error']}"
    return f"  {number}. {attempt['model_id']} answered in {took}"


def explain_lines(decision: dict[str, Any]) -> list[str]:
    """Readable lines for a ``routing_decision`` (see ``RoutingPlan.decision`` for its keys)."""
    lines = [
        f"Routing: rule {decision.get('rule')} (policy {decision.get('policy')}): {decision.get('reason')}"
    ]
    local_only = decision.get("local_only") or {}
    if local_only.get("active"):
        lines.append(f"Local-only: {local_only.get('reason')}")
    if decision.get("agents"):
        lines.append("Agents:")
        lines += [_agent_line(a) for a in decision["agents"]]
    models = decision.get("models") or []
    order = {m: i for i, m in enumerate(decision.get("candidates") or [])}
    candidates = sorted(
        (m for m in models if m.get("status") == "candidate"), key=lambda m: order.get(m["model_id"], 0)
    )
    lines.append("Candidates, in order:" if candidates else "Candidates: none")
    lines += [f"  {i}. {_model_line(m)}" for i, m in enumerate(candidates, 1)]
    others = [m for m in models if m.get("status") != "candidate"]
    if others:
        lines.append("Not tried:")
        lines += [f"  - {m.get('status')}: {_model_line(m)}" for m in others]
    lines += [f"Note: {note}" for note in decision.get("notes") or []]
    attempts = decision.get("attempts") or []
    if attempts:
        lines.append("Attempts:")
        lines += [_attempt_line(i, a) for i, a in enumerate(attempts, 1)]
    if decision.get("selected"):
        lines.append(f"Answered by {decision['selected']}.")
    return lines


def explain(decision: dict[str, Any]) -> str:
    return "\n".join(explain_lines(decision))
