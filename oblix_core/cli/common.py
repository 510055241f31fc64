"""Helpers shared by the ``oblix`` commands: output, errors, the client, ids, models, prompts."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import click
from rich.console import Console

from oblix_core.cli.tables import print_table as print_table  # the commands import it from here
from oblix_core.config.settings import DEFAULT_CLOUD_MODEL, load_config
from oblix_core.errors import OblixError
from oblix_core.terminal.console import cli_message
from oblix_core.validation import parse_flag

if TYPE_CHECKING:
    from oblix_core.client import OblixClient
    from oblix_core.sessions.api import SessionsAPI

console = Console()
#: For progress bars and notices: stderr, so that stdout carries only results.
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@attrs.define
class CliState:
    """Options of the ``oblix`` group that every command sees (``--store``, ``--store-option``)."""

    store: str | None = None
    store_options: dict[str, Any] = attrs.field(factory=dict)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def parse_scalar(text: str) -> Any:
    """``text`` as a JSON scalar if it is one (``true``, ``3``, ``0.5``, ``null``), else the string.

    ``True``/``FALSE`` (JSON's words in any case) are booleans too; quote them (``'"True"'``)
    for the string.
    """
    if text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float | str) else text


def parse_pairs(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict, values parsed with :func:`parse_scalar`.

    ``local_only`` is a flag wherever it is given (``--filter local_only=yes``): read by
    :func:`~oblix_core.validation.parse_flag`, an unclear value is refused, never guessed
    (a quoted JSON string, ``local_only='"true"'``, stays the string).
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=flag)
        result[key.strip()] = parse_scalar(value)
        if key.strip() == "local_only" and not value.strip().startswith('"'):
            try:
                result["local_only"] = parse_flag(result["local_only"], "local_only")
            except OblixError as exc:
                raise click.BadParameter(str(exc), param_hint=flag) from None
    return result


def handle_errors(func: F) -> F:
    """Turn an OblixError (or a file-system error) into a one-line message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OblixError as exc:
            raise click.ClickException(cli_message(exc)) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise click.ClickException(
                f"{exc.strerror or exc}{where}. Check that $OBLIX_HOME is writable, or choose another "
                "with OBLIX_HOME=... or --store."
            ) from None

    return wrapper  # type: ignore[return-value]


def cli_state() -> CliState:
    """The root group's options (defaults when a command runs outside ``oblix``)."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_root().obj if ctx is not None else None
    return state if isinstance(state, CliState) else CliState()


def make_client() -> OblixClient:
    """A client on the store chosen by ``--store``/``--store-option``, else by ``config.toml``."""
    from oblix_core.client import OblixClient

    state = cli_state()
    if state.store is None and not state.store_options:
        return OblixClient()
    config = load_config()
    name = state.store or config.store
    options = dict(config.store_options) if name == config.store else {}
    options.update(state.store_options)
    return OblixClient(session_store=name, store_options=options)


@contextlib.contextmanager
def session_client() -> Iterator[OblixClient]:
    """A client for session commands (no models, no agents); its store is closed after."""
    client = make_client()
    try:
        yield client
    finally:
        client.store.close()


async def ready_client(
    specs: tuple[tuple[str, ...], tuple[str, ...], str | None] = ((), (), None),
) -> OblixClient:
    """A client with the configured (or default) models hooked and the agents running; with
    ``specs`` (``--local-model``/``--cloud-model`` ``TYPE:NAME`` lists and a key) those models
    instead. A default model that cannot load (its extra is not installed) is skipped with
    a one-line notice on stderr.
    """
    client = make_client()
    local, cloud, key = specs
    try:
        if local or cloud:
            await client.hook_model_specs(local, cloud, key)
        else:
            await hook_models(client)
        client.hook_default_agents()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await client.shutdown()
        raise
    return client


async def hook_models(client: OblixClient, cloud_only: bool = False) -> list[str]:
    """``client.hook_configured_models``, with skipped defaults reported on stderr."""
    import logging

    class Notice(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            click.echo(f"Note: {record.getMessage()}", err=True)

    logger = logging.getLogger("oblix_core.client")
    handler = Notice(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        return await client.hook_configured_models(cloud_only=cloud_only)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def resolve_model(client: OblixClient, name: str) -> str:
    """A hooked model id from an id, an ``[aliases]`` name or a bare, unambiguous model name.

    Asked for the default cloud model (``gpt-4o-mini``) on the embedded defaults without its
    key in the environment, the error says that the key is what adds it.
    """
    try:
        return client.resolve_model(name, what="--model")
    except OblixError as exc:
        cloud = DEFAULT_CLOUD_MODEL
        wanted = client.config.aliases.get(name, name)
        env = str(cloud["api_key_env"])
        if client.config.models or wanted not in (cloud["name"], f"{cloud['type']}:{cloud['name']}"):
            raise
        if os.environ.get(env):
            raise
        raise OblixError(
            f"{exc} {cloud['type']}:{cloud['name']} joins the default models when ${env} is set: "
            f"export {env}=... (with pip install 'oblix[{cloud['type']}]')."
        ) from None


def most_recent_session(client: SessionsAPI) -> str:
    """The most recently updated session's id (for ``--continue``)."""
    found = client.list_sessions(limit=1)
    if not found:
        raise OblixError("There is no session to continue yet; run without -c/--continue to start one.")
    return str(found[0]["id"])


def read_prompt(prompt: str | None) -> str:
    """The prompt from the argument and/or stdin (``-`` or a pipe).

    ``oblix run -`` and ``echo x | oblix run`` read the prompt from stdin; ``cat f |
    oblix run "summarise this"`` sends the argument, a blank line, then stdin (the
    instruction first, as typed; ``llm`` puts stdin first).
    """
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    if prompt == "-":
        prompt = None
    if prompt is None and not piped.strip():
        raise click.UsageError("Give a PROMPT, or pipe it on stdin (echo 'Hi' | oblix run).")
    if prompt is None:
        return piped
    return f"{prompt}\n\n{piped}" if piped.strip() else prompt
