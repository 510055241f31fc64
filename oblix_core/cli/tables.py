"""The ``sessions list`` table, readable at 80 columns: relative times, ``key=value``
metadata, titles cut at a word boundary, ids never shortened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from oblix_core.cli.common import console
from oblix_core.sessions.records import parse_timestamp

#: Longest title shown in a listing (cut at a word boundary, with an ellipsis).
TITLE_CHARS = 40


def relative_time(timestamp: str, now: datetime | None = None) -> str:
    """``just now``, ``5m ago``, ``3h ago``, ``2d ago``, then the date (``2024-05-01``)."""
    try:
        then = parse_timestamp(timestamp)
    except ValueError:
        return timestamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size, below in (("m", 60, 3600), ("h", 3600, 86400), ("d", 86400, 7 * 86400)):
        if seconds < below:
            return f"{int(seconds // size)}{unit} ago"
    return then.date().isoformat()


def cut_title(title: str | None, limit: int = TITLE_CHARS) -> str:
    """``title`` on one line, cut at the last word boundary before ``limit`` characters."""
    text = " ".join((title or "").split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def metadata_text(metadata: dict[str, Any]) -> str:
    """``key=value`` pairs, values as JSON when they are not plain text."""
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in metadata.items())


def print_sessions(title: str, found: Sequence[dict[str, Any]], snippets: bool = False) -> None:
    """A table of sessions: id (never shortened), updated, messages, then the title with the
    metadata (or, with ``snippets``, the text a search matched) dimmed beneath it."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("id", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("msgs", justify="right", no_wrap=True)
    table.add_column("title / match" if snippets else "title / metadata", overflow="fold")
    for s in found:
        below = s.get("snippet", "") if snippets else metadata_text(s.get("metadata") or {})
        text = Text(cut_title(s.get("title")) or "(untitled)")
        if below:
            text.append("\n" + below, style="dim")
        table.add_row(s["id"], relative_time(s["updated_at"]), str(s["message_count"]), text)
    console.print(table)


def usage_line(metrics: dict[str, Any]) -> str:
    """``Token usage: 12 input, 40 output`` (+ prompt-cache reads, cost, "estimated")."""
    parts = [f"{metrics.get('input_tokens', 0)} input", f"{metrics.get('output_tokens', 0)} output"]
    cached = metrics.get("cached_input_tokens") or metrics.get("cache_read_input_tokens")
    if cached:
        parts.append(f"{cached} read from the prompt cache")
    cost = metrics.get("cost_usd")
    line = "Token usage: " + ", ".join(parts)
    if metrics.get("tokens_estimated"):
        line += " (estimated: the model reported none)"
    return line + (f"; cost ${cost:.6f}" if isinstance(cost, int | float) else "")
