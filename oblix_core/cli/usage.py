"""``oblix usage``: requests, tokens, cost, the share answered locally, and what it saved."""

from __future__ import annotations

from typing import Any

import click

from oblix_core.cli.common import handle_errors, make_client, print_json
from oblix_core.cli.tables import Column, print_table
from oblix_core.usage.ledger import GROUPINGS


def _usd(value: float) -> str:
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def _cells(row: dict[str, Any]) -> list[Any]:
    return [
        row["key"],
        row["requests"],
        f"{row['local_share'] * 100:.0f}%",
        row["input_tokens"],
        row["output_tokens"],
        _usd(row["cost_usd"]),
        _usd(row["saved_usd"]),
        row["avg_latency_ms"],
    ]


#: The table's columns; a narrow terminal loses the least useful first (numbers are never split).
COLUMNS = [
    Column("group", keep=100),
    Column("requests", keep=90, right=True),
    Column("local", keep=80, right=True),
    Column("tokens in", keep=40, right=True),
    Column("tokens out", keep=40, right=True),
    Column("cost", keep=70, right=True),
    Column("saved", keep=60, right=True),
    Column("avg ms", keep=30, right=True),
]


@click.command()
@click.option("--since", default="7d", show_default=True, help="7d, 2w, 3m (30-day months) or a date.")
@click.option("--by", type=click.Choice(GROUPINGS), help="A row per model, day or session.")
@click.option(
    "--versus", metavar="MODEL", help="Reference cloud model for 'saved' (default: the configured one)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--repair", is_flag=True, help="Move a damaged ledger aside; start afresh with what it still holds."
)
@handle_errors
def usage(since: str, by: str | None, versus: str | None, as_json: bool, repair: bool) -> None:
    """What was answered, locally and in the cloud, what it cost and what it saved.

    'saved' is what the same tokens would have cost on the reference cloud model, less
    what they cost. Read from the session store's usage ledger (shared by every host on
    a shared store). --repair sets a damaged ledger right (see docs/usage.md).
    """
    client = make_client()
    try:
        if repair:
            click.echo(client.usage_ledger.repair())
            return
        report = client.usage(since=since, by=by, versus=versus)
    finally:
        client.usage_ledger.close()
        client.store.close()
    if as_json:
        print_json(report)
        return
    rows = [_cells(r) for r in report["rows"]] + [_cells(report["total"])]
    title = f"Usage since {report['since']} (saved: versus {report['versus']}"
    title += f"; prices of {report['prices_as_of']})"
    print_table(title, COLUMNS, rows)
