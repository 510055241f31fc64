"""The ``oblix`` command line. Plugins add commands through ``oblix_register_commands``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from oblix_core import __version__
from oblix_core.cli import plugins_new
from oblix_core.cli.common import (
    CliState,
    cli_message,
    cli_state,
    handle_errors,
    make_client,  # noqa: F401 - re-exported: plugins' commands import it from here
    parse_pairs,
    print_json,
    session_client,
)
from oblix_core.cli.tables import Column, print_table
from oblix_core.config.settings import load_config, oblix_home
from oblix_core.errors import OblixError
from oblix_core.plugins import registry
from oblix_core.plugins.registry import OblixPluginManager, Registry, build_plugin_manager, plugin_infos

#: Set to 1 to see the traceback of an unexpected error instead of a one-line message.
DEBUG_ENV = "OBLIX_DEBUG"


def _stores_by_plugin(reg: Registry) -> dict[str, list[str]]:
    """The session-store names each plugin registered (a failing plugin's are dropped)."""
    found: dict[str, list[str]] = {}
    for name in reg.stores:
        found.setdefault(reg.owner("Session store", name), []).append(name)
    return found


def _store_in_use() -> tuple[str, dict[str, Any]]:
    """The store in use and where it keeps its data; a file store not created yet is described,
    not opened (listing plugins writes nothing into the Oblix home)."""
    state, config = cli_state(), load_config()
    name = state.store or config.store
    options = (dict(config.store_options) if name == config.store else {}) | state.store_options
    root = Path(options.get("root") or oblix_home() / "sessions").expanduser()
    if name == "file" and not root.exists():
        return name, {"name": name, "root": str(root), "created": "no"}
    with session_client() as client:
        return client.store.name, client.store.describe()


def _store_rows(reg: Registry) -> list[dict[str, Any]]:
    """Each registered store; where the one in use keeps its data (``describe()``, no secrets)."""
    try:
        name, in_use = _store_in_use()
    except OblixError as exc:  # the configured store cannot be opened: still list the plugins
        name, in_use = "", {"error": cli_message(exc)}
    rows = []
    for plugin, names in _stores_by_plugin(reg).items():
        for store in names:
            where = in_use if store == name else None
            rows.append({"store": store, "plugin": plugin, "in_use": where is not None, "where": where})
    return rows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oblix")
@click.option(
    "--store",
    default=None,
    metavar="NAME",
    help="Session store for this command (file, redis, s3...), overriding config.toml.",
)
@click.option(
    "--store-option",
    "store_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of that store (repeatable), e.g. --store-option url=redis://127.0.0.1:6379/0.",
)
@click.pass_context
def cli(ctx: click.Context, store: str | None, store_options: tuple[str, ...]) -> None:
    """Oblix: route prompts between local and cloud models, with persistent sessions."""
    if store is not None and not store.strip():  # `--store "$STORE"` with STORE unset
        raise click.BadParameter(
            "is empty: name a session store (file, redis, s3...), or leave --store out for "
            "config.toml's.",
            param_hint="--store",
        )
    ctx.obj = CliState(store=store, store_options=parse_pairs(store_options, "--store-option"))


#: ``oblix plugins``' tables; on a narrow terminal hooks and packages go first, names stay whole.
PLUGIN_COLUMNS = [
    Column("name", keep=100),
    Column("package", keep=30),
    Column("version", keep=60),
    Column("status", keep=80, wraps=True),
    Column("hooks", keep=40, wraps=True),
]
STORE_COLUMNS = [
    Column("store", keep=100),
    Column("plugin", keep=50),
    Column("in use", keep=80),
    Column("where", keep=60, wraps=True),
]


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """Plugins (loaded, not installed, failed) and session stores (where the one in use keeps
    its data); `oblix plugins new` writes a new plugin package."""
    if ctx.invoked_subcommand is None:
        _list_plugins(as_json)


plugins.add_command(plugins_new.new)


@handle_errors
def _list_plugins(as_json: bool) -> None:
    pm = build_plugin_manager()
    reg = Registry.load(pm)  # registration failures are skipped and reported too
    register_commands(pm, _builtin_group(pm))  # and so are those of command plugins (clashes too)
    infos = plugin_infos(pm)
    stores = _store_rows(reg)
    skipped = list(pm.skipped.values())
    if as_json:
        by_plugin: dict[str, list[dict[str, Any]]] = {}
        for row in stores:
            by_plugin.setdefault(row["plugin"], []).append({k: v for k, v in row.items() if k != "plugin"})
        loaded = [i.to_dict() | {"status": "loaded", "stores": by_plugin.get(i.name, [])} for i in infos]
        print_json(loaded + [s.to_dict() for s in skipped])
        return
    print_table(
        "Oblix plugins",
        PLUGIN_COLUMNS,
        [(i.name, i.package or i.module, i.version or "-", "loaded", ", ".join(i.hooks)) for i in infos]
        + [
            (s.name, s.package or s.module, s.version or "-", f"{s.status}: {s.install or s.reason}", "")
            for s in skipped
        ],
    )
    print_table(
        "Session stores",
        STORE_COLUMNS,
        [
            (
                r["store"],
                r["plugin"],
                "yes" if r["in_use"] else "",
                ", ".join(f"{k}={v}" for k, v in r["where"].items() if k != "name") if r["where"] else "-",
            )
            for r in stores
        ],
        blank=True,
    )


def build_cli() -> click.Group:
    """A root group with the built-in commands and every plugin's commands (the hook runs once)."""
    pm = build_plugin_manager()
    group = _builtin_group(pm)
    register_commands(pm, group)
    return group


def _builtin_group(pm: OblixPluginManager) -> _Oblix:
    """The root group with Oblix's own commands only."""
    from oblix_core.cli import config as cli_config
    from oblix_core.cli import docs as cli_docs
    from oblix_core.cli import run as cli_run
    from oblix_core.cli import sessions as cli_sessions
    from oblix_core.cli import templates as cli_templates
    from oblix_core.cli import usage as cli_usage

    group = _Oblix(
        pm,
        name="oblix",
        callback=cli.callback,
        params=list(cli.params),
        help=cli.help,
        context_settings=dict(cli.context_settings),
    )
    group.add_command(plugins)
    group.add_command(cli_sessions.sessions)
    for command in (cli_run.run, cli_run.chat, cli_config.models_group(cli_run.models), cli_run.agents):
        group.add_command(command)
    group.add_command(cli_templates.templates)
    group.add_command(cli_config.aliases)
    group.add_command(cli_usage.usage)
    group.add_command(cli_docs.docs)
    return group


def register_commands(pm: OblixPluginManager, group: click.Group) -> None:
    """Each plugin's ``oblix_register_commands``, on its own: one that raises, exits or replaces
    a command is skipped (``oblix_core.plugins.registry.register_commands``)."""
    registry.register_commands(pm, group)


class _Oblix(click.Group):
    """The root group: a command of a plugin that is not installed names what to install."""

    def __init__(self, pm: OblixPluginManager, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pm = pm

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        hint = None if found is not None else self.pm.missing_hint(cmd_name)
        if hint is None:
            return found

        def unavailable() -> None:
            raise click.ClickException(f"`oblix {cmd_name}` is not available: {hint}")

        return click.Command(
            cmd_name,
            callback=unavailable,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,
        )


def _restore_ctrl_c() -> None:
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _ignore_ctrl_c() -> None:
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> None:
    """The ``oblix`` entry point: a one-line message, never a traceback, for any error.

    Exit status: 0, 1 for errors, 2 for usage errors, 130 after Ctrl-C.
    """
    _restore_ctrl_c()  # started: Ctrl-C is KeyboardInterrupt again (see oblix_core.cli)
    try:
        code = build_cli().main(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C where no command handles it itself
        sys.stderr.write("\nInterrupted.\n")
        code = 130
    except OblixError as exc:
        sys.stderr.write(f"Error: {cli_message(exc)}\n")
        code = 1
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a bug or an unforeseen environment: say what, not a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(
            f"Error: {type(exc).__name__}: {exc}. This is unexpected; run again with {DEBUG_ENV}=1 "
            "for the traceback and report it.\n"
        )
        code = 1
    _ignore_ctrl_c()  # exiting: a late Ctrl-C must not turn a clean exit into a kill
    raise SystemExit(code or 0)
