"""Tables of the ``oblix`` commands, for a terminal and for a pipe.

On a terminal a table fits the window: ids, numbers, paths and other single words are
never split; when the window is too narrow, the least useful columns are left out (and
named under the table) and only text columns wrap, at spaces. Anywhere else (a pipe, a
file) a table is plain text: a title line, a header line and one line per row, columns
aligned with two spaces, nothing wrapped, cut or split, whatever ``COLUMNS`` says.
``TTY_COMPATIBLE=1`` (or ``0``), rich's own switch, treats stdout as a terminal (or not).

Also the ``sessions list`` helpers: relative times, ``key=value`` metadata, titles cut at
a word boundary, ids never shortened.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import click
from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from oblix_core.sessions.records import parse_timestamp
from oblix_core.terminal.printable import printable

#: Longest title shown in a listing on a terminal (cut at a word boundary, with an ellipsis).
TITLE_CHARS = 40
#: Space between two columns (both forms).
GAP = 2

console = Console()


@attrs.frozen
class Column:
    """A column: ``keep`` ranks it when a terminal is too narrow (the lowest goes first; the
    first column always stays); ``wraps`` lets its text wrap at spaces on a terminal (other
    columns are never split), down to ``least`` cells if given (longer words are then folded),
    else to its longest word; ``right`` justifies it to the right (numbers)."""

    name: str
    keep: int = 0
    wraps: bool = False
    right: bool = False
    least: int | None = None


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (``TTY_COMPATIBLE=1``/``0`` says so instead of asking)."""
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stdout.isatty()
    except ValueError:  # closed
        return False


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _columns(columns: Sequence[str | Column], rows: Sequence[Sequence[str]]) -> list[Column]:
    """Plain names as columns: the leftmost are kept longest; text with spaces wraps."""
    found = []
    for i, column in enumerate(columns):
        if isinstance(column, str):
            spaced = any(" " in row[i] for row in rows if i < len(row))
            column = Column(column, keep=len(columns) - i, wraps=spaced)
        found.append(column)
    return found


def plain_table(title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]]) -> str:
    """The table for a pipe: title, header and one line per row, aligned, never wrapped.

    White space inside a value (line breaks included) becomes one space, other control
    characters their escapes (:func:`printable`), and an empty value is ``-``, so every row
    is one line with a value in each column and no value writes to the terminal.
    """
    names = [c.name if isinstance(c, Column) else c for c in columns]
    cells = [[printable(" ".join(_cell(v).split())) or "-" for v in row] for row in rows]
    right = [isinstance(c, Column) and c.right for c in columns]
    widths = [max([cell_len(n)] + [cell_len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = [title] if title else []
    for row in [names, *cells]:
        parts = []
        for i, value in enumerate(row):
            pad = " " * (widths[i] - cell_len(value))
            last = i == len(row) - 1
            parts.append(pad + value if right[i] else value + ("" if last else pad))
        lines.append((" " * GAP).join(parts).rstrip())
    return "\n".join(lines)


def _sizes(column: Column, cells: Sequence[str]) -> tuple[int, int]:
    """A column's natural width (its longest line) and the least it takes: the same, or for a
    wrapping column its longest word (so that no word is split)."""
    lines = [column.name] + [line for cell in cells for line in cell.splitlines()]
    natural = max(cell_len(line) for line in lines)
    if not column.wraps:
        return natural, natural
    if column.least is not None:
        return natural, min(natural, max(column.least, cell_len(column.name)))
    return natural, max(cell_len(word) for line in lines for word in line.split() or [""])


def fit_columns(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int) -> dict[int, int]:
    """The columns kept within ``width`` (index → width): the lowest ``keep`` go first while
    even the least widths do not fit; the space left goes to the wrapping columns."""
    sizes = [_sizes(c, [row[i] for row in cells]) for i, c in enumerate(columns)]
    kept = list(range(len(columns)))

    def least() -> int:
        return sum(sizes[i][1] for i in kept) + GAP * (len(kept) - 1)

    while least() > width and len(kept) > 1:
        kept.remove(min(kept[1:], key=lambda i: (columns[i].keep, -i)))
    widths = {i: sizes[i][1] for i in kept}
    spare = width - least()
    while spare > 0:
        short = [i for i in kept if widths[i] < sizes[i][0]]
        if not short:
            break
        for i in short:
            grow = min(sizes[i][0] - widths[i], max(1, spare // len(short)), spare)
            widths[i] += grow
            spare -= grow
    return widths


def terminal_table(
    title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], width: int
) -> RenderableType:
    """The table for a terminal ``width`` columns wide (see the module's docstring); text cells
    are made :func:`printable` (a :class:`~rich.text.Text` cell is its maker's to make so)."""
    texts = [[v if isinstance(v, Text) else Text(printable(_cell(v))) for v in row] for row in rows]
    plain = [[t.plain for t in row] for row in texts]
    specs = _columns(columns, plain)
    widths = fit_columns(specs, plain, width)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for i, width_i in widths.items():
        spec = specs[i]
        table.add_column(
            spec.name,
            width=width_i,
            no_wrap=not spec.wraps,
            overflow="fold",
            justify="right" if spec.right else "left",
        )
    for row in texts:
        table.add_row(*(row[i] for i in widths))
    hidden = [c.name for i, c in enumerate(specs) if i not in widths]
    if not hidden:
        return table
    note = f"Not shown at {width} columns: {', '.join(hidden)} (a wider window or a pipe shows them)."
    return Group(table, Text(note, style="dim"))


def print_table(
    title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], blank: bool = False
) -> None:
    """A table on stdout: fitted to a terminal, plain text anywhere else. Cells are plain
    text (brackets in them, ``[INST]``, ``oblix[redis]``, are shown, never read as markup)
    or :class:`~rich.text.Text`. ``blank``: a blank line first (a table after another)."""
    if stdout_is_terminal():
        if blank:
            console.print()
        console.print(terminal_table(title, columns, rows, console.width))
        return
    cells = [[v.plain if isinstance(v, Text) else v for v in row] for row in rows]
    click.echo(("\n" if blank else "") + plain_table(title, columns, cells))


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
    """``title`` on one line, :func:`printable`, cut at the last word boundary before ``limit``
    characters."""
    text = printable(" ".join((title or "").split()))
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
    """A table of sessions: id (never shortened), updated, messages, the title, and the
    metadata (or, with ``snippets``, the text a search matched). On a terminal the title is
    cut at a word boundary and the metadata dimmed beneath it; in a pipe each is a column."""
    head = [Column("id", keep=100), Column("updated", keep=90), Column("msgs", keep=80, right=True)]
    below = [s.get("snippet", "") if snippets else metadata_text(s.get("metadata") or {}) for s in found]
    lead = [[s["id"], relative_time(s["updated_at"]), str(s["message_count"])] for s in found]
    if not stdout_is_terminal():
        rows = [
            [*row, " ".join((s.get("title") or "").split()), extra]
            for row, s, extra in zip(lead, found, below, strict=True)
        ]
        print_table(title, [*head, Column("title"), Column("match" if snippets else "metadata")], rows)
        return
    texts = []
    for s, extra in zip(found, below, strict=True):
        text = Text(cut_title(s.get("title")) or "(untitled)")
        if extra:
            text.append("\n" + printable(extra), style="dim")
        texts.append(text)
    name = "title / match" if snippets else "title / metadata"
    print_table(
        title,
        [*head, Column(name, keep=50, wraps=True, least=TITLE_CHARS // 2)],
        [[*r, t] for r, t in zip(lead, texts, strict=True)],
    )


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
