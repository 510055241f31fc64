"""``oblix templates save|list|show|delete`` and ``oblix run -t NAME [-p KEY VALUE]``."""

from __future__ import annotations

import string
import sys
from typing import Any

import click
import tomlkit

from oblix_core.cli.common import handle_errors, parse_scalar, print_json
from oblix_core.cli.tables import Column, cut_title, print_table
from oblix_core.config.settings import oblix_home
from oblix_core.config.templates import (
    Template,
    delete_template,
    list_templates,
    load_template,
    save_template,
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def use_template(
    name: str | None,
    params: tuple[tuple[str, str], ...],
    prompt: str | None,
    system: str | None,
    model: str | None,
) -> tuple[str, str | None, str | None, dict[str, Any]]:
    """``oblix run -t NAME``: the prompt, system prompt, model and options the template gives.

    The prompt argument and stdin (appended after a blank line) are ``$input``; ``-s`` and
    ``-m`` win over the template's own.
    """
    if name is None:
        raise click.UsageError("-p/--param goes with -t/--template NAME.")
    template = load_template(oblix_home(), name)
    given = "" if prompt in (None, "-") else str(prompt)
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    text = f"{given}\n\n{piped}" if given and piped.strip() else given or piped
    if not text.strip() and "input" in string.Template(template.prompt).get_identifiers():
        raise click.UsageError(
            f"Template {name} puts the text given to it at $input: add a PROMPT or pipe text on stdin "
            f'(oblix run -t {name} "...", or ... | oblix run -t {name}).'
        )
    rendered, own_system = template.render(text, {k: parse_scalar(v) for k, v in params})
    if not rendered.strip():
        raise click.UsageError(f"Template {name} gives an empty prompt: add a PROMPT or pipe text on stdin.")
    return rendered, system or own_system, model or template.model, dict(template.options)


@click.group()
def templates() -> None:
    """Saved prompts with $input and named $parameters, used with `oblix run -t NAME`."""


@templates.command("save")
@click.argument("name")
@click.argument("prompt", required=False)
@click.option("-s", "--system", default=None, help="A system prompt that goes with it.")
@click.option("-m", "--model", default=None, help="The model it uses (id, bare name or alias).")
@click.option(
    "-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
    help="A default value of the parameter $NAME (repeatable).",
)  # fmt: skip
@click.option(
    "-o", "--option", "option_pairs", type=(str, str), multiple=True, metavar="KEY VALUE",
    help="A generation option, e.g. -o temperature 0.2 (repeatable).",
)  # fmt: skip
@handle_errors
def save(
    name: str,
    prompt: str | None,
    system: str | None,
    model: str | None,
    params: tuple[tuple[str, str], ...],
    option_pairs: tuple[tuple[str, str], ...],
) -> None:
    """Save PROMPT as the template NAME (replacing one of that name); `-` reads it from stdin.

    In PROMPT, $input is the text given to `oblix run -t NAME` and $word a parameter
    (`-p word VALUE`); $$ is a literal $. Quote it in single quotes in the shell.
    """
    if prompt == "-":
        prompt = sys.stdin.read()
    template = Template(
        name,
        prompt or "",
        system,
        model,
        {k: parse_scalar(v) for k, v in params},
        {k: parse_scalar(v) for k, v in option_pairs},
    )
    path = save_template(oblix_home(), template)
    shown = ", ".join(template.parameters()) or "none"
    click.echo(f"Saved template {name} ({path}); parameters: {shown}.")


@templates.command("list")
@json_option
@handle_errors
def list_(as_json: bool) -> None:
    """The saved templates."""
    found = list_templates(oblix_home())
    if as_json:
        print_json({t.name: t.to_dict() for t in found})
        return
    rows = [
        (t.name, cut_title(t.prompt or f"(system) {t.system}", 50), ", ".join(t.parameters())) for t in found
    ]
    columns = [
        Column("name", keep=100),
        Column("prompt", keep=60, wraps=True),
        Column("parameters", keep=80, wraps=True),
    ]
    print_table("Templates", columns, rows)


@templates.command("show")
@click.argument("name")
@json_option
@handle_errors
def show(name: str, as_json: bool) -> None:
    """The template NAME as stored."""
    template = load_template(oblix_home(), name)
    if as_json:
        print_json(template.to_dict())
    else:
        click.echo(tomlkit.dumps(template.to_dict()), nl=False)


@templates.command("delete")
@click.argument("name")
@handle_errors
def delete(name: str) -> None:
    """Delete the template NAME."""
    if not delete_template(oblix_home(), name):
        raise click.ClickException(f"No template {name}; `oblix templates list` shows them.")
    click.echo(f"Deleted template {name}.")
