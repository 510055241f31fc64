"""The ``oblix`` command line. Plugins add commands through ``oblix_register_commands``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from oblix_core import __version__
from oblix_core.errors import OblixError
from oblix_core.plugins import build_plugin_manager, plugin_infos

console = Console()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def make_client() -> Any:
    from oblix_core.client import OblixClient

    return OblixClient()


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an OblixError into a one-line message and exit status 1."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OblixError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="oblix")
def cli() -> None:
    """Oblix: route prompts between local and cloud models, with persistent sessions."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def plugins(as_json: bool) -> None:
    """List loaded plugins, their versions and hooks."""
    infos = plugin_infos(build_plugin_manager())
    if as_json:
        print_json([i.to_dict() for i in infos])
        return
    print_table(
        "Oblix plugins",
        ["name", "package", "version", "hooks"],
        [(i.name, i.package or i.module, i.version or "-", ", ".join(i.hooks)) for i in infos],
    )


def build_cli() -> click.Group:
    """The root group with the built-in commands and every plugin's commands."""
    from oblix_core import cli_run, cli_sessions

    cli.add_command(cli_sessions.sessions)
    for command in (cli_run.run, cli_run.chat, cli_run.models, cli_run.agents):
        cli.add_command(command)
    build_plugin_manager().hook.oblix_register_commands(cli=cli)
    return cli


def main() -> None:
    try:
        group = build_cli()
    except OblixError as exc:
        raise SystemExit(f"Error: {exc}") from exc
    group()
