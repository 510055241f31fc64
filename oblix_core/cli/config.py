"""Defaults from the command line, written to ``config.toml`` (see :mod:`oblix_core.config.write`).

``oblix aliases list|set|remove``, ``oblix models default [NAME | --clear]`` and
``oblix models options show|set|clear``: per-model generation defaults (``defaults`` of
a ``[[models]]`` entry) used when a request does not set them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import tomlkit

from oblix_core.cli.common import handle_errors, parse_scalar, print_json, print_table
from oblix_core.client import ROUTING_OPTIONS, OblixClient
from oblix_core.config.settings import default_model_entries, load_config
from oblix_core.config.write import model_entries, table, update_config
from oblix_core.errors import OblixError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def entry_ids(entry: dict[str, Any]) -> set[str]:
    """The ids a ``[[models]]`` entry may go by: ``type:name`` (and ``type:<file stem>`` for paths)."""
    kind, name = str(entry.get("type", "")), str(entry.get("name", ""))
    return {f"{kind}:{name}", f"{kind}:{Path(name).stem}", name, Path(name).stem}


def configured_ids() -> list[str]:
    """The model ids config.toml lists (or the embedded defaults), without hooking any."""
    entries = list(load_config().models) or default_model_entries({"llama_cpp", "openai"})
    return [f"{e['type']}:{Path(e['name']).stem if '/' in e['name'] else e['name']}" for e in entries]


def default_model(client: OblixClient) -> str | None:
    """The hooked model ``[routing] default_model`` names (``None`` when unset)."""
    from oblix_core.cli.common import resolve_model

    name = client.config.default_model
    if not name:
        return None
    try:
        return resolve_model(client, name)
    except OblixError:
        hooked = ", ".join(m.model_id for m in client.models) or "none"
        raise OblixError(
            f"The default model {name} (config.toml [routing] default_model) is not one of the "
            f"available models ({hooked}); set another with `oblix models default NAME` or "
            "remove it with `oblix models default --clear`."
        ) from None


def _note_unknown(model: str) -> None:
    aliases = load_config().aliases
    known = configured_ids()
    if model not in known and model not in aliases and not any(model == k.split(":", 1)[1] for k in known):
        click.echo(f"Note: {model} is not a configured model now ({', '.join(known) or 'none'}).", err=True)


# -- oblix aliases ---------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.pass_context
def aliases(ctx: click.Context) -> None:
    """Short names for models ([aliases] in config.toml); usable wherever a model is named."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_aliases)


@aliases.command("list")
@json_option
@handle_errors
def list_aliases(as_json: bool = False) -> None:
    """The aliases and the models they name."""
    found = load_config().aliases
    if as_json:
        print_json(found)
    else:
        print_table("Aliases", ["alias", "model"], sorted(found.items()))


@aliases.command("set")
@click.argument("name")
@click.argument("model")
@handle_errors
def set_alias(name: str, model: str) -> None:
    """Make NAME an alias of MODEL (a model id, e.g. llama_cpp:gemma-3-270m)."""
    if not name.strip() or ":" in name:
        raise click.BadParameter("an alias is a short name without ':'", param_hint="NAME")
    _note_unknown(model)
    path = update_config(lambda doc: table(doc, "aliases").__setitem__(name, model))
    click.echo(f"{name} = {model}  ({path})")


@aliases.command("remove")
@click.argument("name")
@handle_errors
def remove_alias(name: str) -> None:
    """Remove the alias NAME."""
    if name not in load_config().aliases:
        raise OblixError(f"No alias {name}; `oblix aliases list` shows them.")
    update_config(lambda doc: table(doc, "aliases").remove(name))
    click.echo(f"Removed the alias {name}.")


# -- oblix models default, oblix models options ----------------------------------------------


@click.command("default")
@click.argument("name", required=False)
@click.option("--clear", is_flag=True, help="Let the router choose again.")
@handle_errors
def default(name: str | None, clear: bool) -> None:
    """Show or set the model `oblix run` and `oblix chat` try first when -m is not given.

    Other models still answer when it cannot (as with -m NAME --fallback). NAME is a model
    id, a bare name or an alias; it is written to [routing] default_model in config.toml.
    """
    if clear or name is None:
        if clear:
            update_config(lambda doc: table(doc, "routing").pop("default_model", None))
        current = load_config().default_model
        click.echo(current or "No default model: the router chooses (`oblix models default NAME` sets one).")
        return
    _note_unknown(name)
    path = update_config(lambda doc: table(doc, "routing").__setitem__("default_model", name))
    click.echo(f"Default model: {name}  ({path})")


@click.group("options")
def options() -> None:
    """Generation defaults per model (max_tokens, temperature, stop...) for requests that set none."""


def _entry_for(document: tomlkit.TOMLDocument, model: str, create: bool) -> Any:
    """The ``[[models]]`` entry of ``model`` (alias resolved); the embedded defaults are written
    out first when the file lists no models and ``create`` is true."""
    target = load_config().aliases.get(model, model)
    entries = model_entries(document)
    if not entries and create:
        found = default_model_entries({"llama_cpp", "openai"})
        if found:
            written = tomlkit.aot()
            for entry in found:
                written.append(tomlkit.item(entry))
            document.append("models", written)
            click.echo("Note: config.toml now lists the default models as [[models]] entries.", err=True)
        entries = model_entries(document)
    matches = [e for e in entries if target in entry_ids(e)]
    if len(matches) != 1:
        listed = ", ".join(f"{e['type']}:{e['name']}" for e in entries) or "none"
        raise OblixError(
            f"{model} is {'ambiguous' if matches else 'not a [[models]] entry'} in config.toml "
            f"(entries: {listed}); give its id, e.g. openai:gpt-4o-mini."
        )
    return matches[0]


@options.command("set")
@click.argument("model")
@click.argument("key")
@click.argument("value")
@handle_errors
def set_option(model: str, key: str, value: str) -> None:
    """Use VALUE for KEY when a request to MODEL sets none (VALUE read as JSON when it parses).

    e.g. `oblix models options set gpt-4o-mini temperature 0.2`,
    `oblix models options set gemma-3-270m stop '["END"]'`.
    """
    if key in ROUTING_OPTIONS:
        raise click.BadParameter(f"{key} is not a generation option", param_hint="KEY")
    parsed = _json_value(value)

    def change(document: tomlkit.TOMLDocument) -> None:
        entry = _entry_for(document, model, create=True)
        if "defaults" not in entry:
            entry["defaults"] = tomlkit.inline_table()
        entry["defaults"][key] = parsed

    update_config(change)
    click.echo(f"{model}: {key} = {parsed!r} unless a request sets it.")


def _json_value(text: str) -> Any:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return parse_scalar(text)
    return value if value is not None else text


@options.command("clear")
@click.argument("model")
@click.argument("key", required=False)
@handle_errors
def clear_option(model: str, key: str | None) -> None:
    """Forget MODEL's default for KEY (every default without KEY)."""

    def change(document: tomlkit.TOMLDocument) -> None:
        entry = _entry_for(document, model, create=False)
        if key is None:
            entry.pop("defaults", None)
        elif key in entry.get("defaults", {}):
            entry["defaults"].pop(key)
            if not entry["defaults"]:
                entry.pop("defaults")
        else:
            raise OblixError(f"{model} has no default for {key}; `oblix models options show` lists them.")

    update_config(change)
    click.echo(f"{model}: cleared {key or 'every default'}.")


@options.command("show")
@json_option
@handle_errors
def show_options(as_json: bool) -> None:
    """Each configured model's generation defaults."""
    found = {f"{e['type']}:{e['name']}": dict(e.get("defaults", {})) for e in load_config().models}
    if as_json:
        print_json(found)
        return
    rows = [(m, ", ".join(f"{k}={v!r}" for k, v in d.items()) or "-") for m, d in found.items()]
    print_table("Generation defaults", ["model", "defaults"], rows)


def models_group(command: click.Command) -> click.Group:
    """``oblix models``: ``command`` (the listing, with its options) plus ``default`` and ``options``."""
    callback = command.callback
    assert callback is not None

    @click.pass_context
    def listing(ctx: click.Context, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is None:
            callback(**kwargs)

    group = click.Group(
        command.name,
        params=list(command.params),
        callback=listing,
        help=command.help,
        short_help=command.short_help,
        invoke_without_command=True,
    )
    group.add_command(default)
    group.add_command(options)
    return group
