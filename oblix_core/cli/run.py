"""``oblix run``, ``oblix chat``, ``oblix models`` and ``oblix agents``: the main job from a terminal."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import attrs
import click

from oblix_core.cli.common import (
    console,
    handle_errors,
    hook_models,
    make_client,
    most_recent_session,
    parse_scalar,
    print_json,
    read_prompt,
    ready_client,
    resolve_model,
)
from oblix_core.cli.config import default_model
from oblix_core.cli.tables import Column, print_table, stdout_is_terminal, terminal_table, usage_line
from oblix_core.cli.templates import use_template
from oblix_core.client import ROUTING_OPTIONS, OblixClient
from oblix_core.documents.retrieval import sources_text
from oblix_core.errors import NoModelAvailableError
from oblix_core.request.conversation import ResponseStream
from oblix_core.request.routing import NO_MODEL_HINT, PREFERENCES
from oblix_core.sessions.api import resolve_session_id
from oblix_core.sessions.records import utc_now
from oblix_core.terminal.console import catch_ctrl_c, print_answer
from oblix_core.terminal.explain import explain

#: Exit status of a command stopped with Ctrl-C (128 + SIGINT), as shells expect.
EXIT_INTERRUPTED = 130
INTERRUPTED = "cancelled by the user"


@attrs.frozen
class RunArgs:
    """What ``oblix run`` was asked to do."""

    prompt: str
    session: str | None
    continue_: bool
    model: str | None
    system: str | None
    options: dict[str, Any]
    local_only: bool
    stream: bool
    as_json: bool
    #: Print the routing decision (candidates, skips, attempts) to stderr.
    explain: bool = False
    #: With ``model``: other models may answer if it cannot.
    fallback: bool = False
    #: ``local-first``/``cloud-first`` for this request (``None``: the configured one).
    preference: str | None = None
    #: The workspace whose documents the answer draws on (``--docs``).
    docs: str | None = None


#: Where ``--docs W`` is kept for :func:`_prepare` (click's context meta).
DOCS_KEY = "oblix.docs"

#: What to use instead of ``-o KEY VALUE`` for each routing option (each names a real flag).
ROUTING_FLAGS = {
    "model": "use -m/--model",
    "local_only": "use --local-only",
    "preference": "use --preference",
    "fallback": "use --fallback (with -m)",
    "system": "use -s/--system",
    "history": "continue a stored conversation with -c/--continue or --session",
    "store": "oblix run always stores the exchange (the SDK takes store=False)",
    "idempotency_key": "use --idempotency-key",
}


#: ``--preference`` for ``run``, ``chat`` and ``server``.
preference_option = click.option(
    "--preference",
    type=click.Choice(PREFERENCES),
    default=None,
    help="Routing preference for this run, overriding config.toml (default local-first).",
)


def model_options(pairs: tuple[tuple[str, str], ...], temperature: Any, max_tokens: Any) -> dict[str, Any]:
    """``-o KEY VALUE`` pairs (values as JSON scalars when they parse) merged with the named flags."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in ROUTING_OPTIONS:
            raise click.BadParameter(
                f"{key} is not a model option; {ROUTING_FLAGS[key]}.", param_hint="-o/--option"
            )
        options[key] = parse_scalar(value)
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    return options


async def _prepare(client: OblixClient, args: RunArgs) -> ResponseStream:
    """Resolve the session and model the user named and start the request."""
    session_id = None
    if args.continue_:
        session_id = await anyio.to_thread.run_sync(most_recent_session, client)
    elif args.session is not None:  # an empty --session "" is an error, not a new session
        session_id = await anyio.to_thread.run_sync(resolve_session_id, client, args.session)
    model = resolve_model(client, args.model) if args.model else default_model(client)
    options = dict(args.options)
    temperature, max_tokens = options.pop("temperature", None), options.pop("max_tokens", None)
    routing: dict[str, Any] = {"local_only": args.local_only}
    if args.preference:
        routing["preference"] = args.preference
    if model:
        routing["model"] = model
        routing["fallback"] = args.fallback or not args.model  # a default model: others may answer
    if args.system:
        routing["system"] = args.system
    context = click.get_current_context(silent=True)
    docs = args.docs or (context.meta.get(DOCS_KEY) if context is not None else None)
    if docs:  # documents: the workspace the answer draws on (--docs)
        routing["workspace_id"] = docs
    return client.stream(
        args.prompt, temperature=temperature, max_tokens=max_tokens, session_id=session_id,
        **routing, **options,
    )  # fmt: skip


async def _run(args: RunArgs) -> dict[str, Any] | None:
    """The result; ``None`` after Ctrl-C (the part shown is stored and the user told so)."""
    response: ResponseStream | None = None
    async with catch_ctrl_c() as keys:
        client: OblixClient | None = None
        try:
            with keys.cancels() as scope:
                client = await ready_client()
                response = await _prepare(client, args)
                if args.as_json:
                    return await response.collect()
                result = await print_answer(response, live=args.stream)
                if result.get("sources"):  # documents: the numbered sources the answer cites
                    click.echo(sources_text(result["sources"]), err=True)
                return result
            if scope.cancelled_caught:
                stored = response is not None and await response.store_interrupted(INTERRUPTED)
                _say_interrupted(response, stored)
        finally:
            if args.explain and response is not None and response.routing_decision is not None:
                click.echo(explain(response.routing_decision), err=True)
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.shutdown()
    return None


def _say_interrupted(response: ResponseStream | None, stored: bool) -> None:
    if stored and response is not None:
        click.echo(
            f"Interrupted. The prompt and the part of the answer shown are stored in session "
            f"{response.request.session_id}, marked interrupted.",
            err=True,
        )
    else:
        click.echo("Interrupted before any answer; nothing was stored.", err=True)


@click.command()
@click.argument("prompt", required=False)
@click.option("-c", "--continue", "continue_", is_flag=True, help="Continue the most recent session.")
@click.option("--session", default=None, help="Continue this session (its id or a unique start of it).")
@click.option(
    "-m", "--model", default=None, help="Use only this model: an id, a bare name or an [aliases] name."
)
@click.option("-s", "--system", default=None, help="System prompt for this request (not stored).")
@click.option(
    "-o",
    "--option",
    "option_pairs",
    type=(str, str),
    multiple=True,
    metavar="KEY VALUE",
    help="A model option, e.g. -o temperature 0.2 -o top_p 0.9 (see `oblix models --options`).",
)
@click.option("--max-tokens", type=int, default=None, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature.")
@click.option("--local-only", is_flag=True, help="Never send this prompt to a cloud model.")
@click.option(
    "--docs", metavar="W", expose_value=False,
    callback=lambda ctx, _p, value: ctx.meta.update({DOCS_KEY: value}),
    help="Answer from workspace W's documents, citing them (oblix docs add).",
)
@click.option("--no-stream", is_flag=True, help="Print the answer once it is complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON instead of streaming.")
@click.option(
    "--explain", is_flag=True, help="Print why each model was chosen or skipped, and the attempts (stderr)."
)
@click.option("--fallback", is_flag=True, help="With -m: let other models answer if that one cannot.")
@preference_option
@click.option("-u", "--usage", is_flag=True, help="Print the token usage (stderr).")
@click.option(
    "--idempotency-key", default=None, metavar="KEY",
    help="Run again with the same KEY (e.g. after a crash) to get the first answer back, not a new one.",
)  # fmt: skip
@click.option("-t", "--template", default=None, help="Use the saved prompt template NAME (oblix templates).")
@click.option(
    "-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
    help="A parameter of the template ($NAME), repeatable.",
)  # fmt: skip
@handle_errors
def run(
    prompt: str | None,
    continue_: bool,
    session: str | None,
    model: str | None,
    system: str | None,
    option_pairs: tuple[tuple[str, str], ...],
    max_tokens: int | None,
    temperature: float | None,
    local_only: bool,
    no_stream: bool,
    as_json: bool,
    explain: bool,
    fallback: bool,
    preference: str | None,
    usage: bool,
    idempotency_key: str | None,
    template: str | None,
    params: tuple[tuple[str, str], ...],
) -> None:
    """Answer PROMPT (streamed) and store it in a session.

    The prompt may come from stdin: `echo Hi | oblix run`, `oblix run -`, or
    `cat notes.txt | oblix run "summarise this"` (stdin is appended to PROMPT). Only the
    answer goes to stdout; the model, token counts and session id go to stderr.
    Ctrl-C stops the answer, stores the part shown and exits with status 130.
    """
    if continue_ and session:
        raise click.UsageError("Give either -c/--continue or --session, not both.")
    template_options: dict[str, Any] = {}
    if template or params:
        prompt, system, model, template_options = use_template(template, params, prompt, system, model)
    args = RunArgs(
        prompt=read_prompt(prompt),
        session=session,
        continue_=continue_,
        model=model,
        system=system,
        options=template_options
        | model_options(option_pairs, temperature, max_tokens)
        | ({"idempotency_key": idempotency_key} if idempotency_key is not None else {}),
        local_only=local_only,
        stream=not no_stream,
        as_json=as_json,
        explain=explain,
        fallback=fallback,
        preference=preference,
    )
    report(anyio.run(_run, args), usage, as_json)


def report(result: dict[str, Any] | None, usage: bool, as_json: bool) -> None:
    """After ``oblix run``: the JSON result, or the model, tokens and session on stderr."""
    if result is None:
        raise SystemExit(EXIT_INTERRUPTED)
    if usage:
        click.echo(usage_line(result["metrics"]), err=True)
    if as_json:
        print_json(result)
        return
    metrics = result["metrics"]
    click.echo(
        f"[{result['model_id']} · {metrics['output_tokens']} tokens · "
        f"{metrics.get('tokens_per_second') or '-'} tok/s · session {result['session_id']}]",
        err=True,
    )


async def flag_client(local: tuple[str, ...], cloud: tuple[str, ...], key: str | None) -> OblixClient:
    """:func:`ready_client`, or, with ``--local-model``/``--cloud-model``, a client with those
    models hooked instead of the configured ones (and the agents running)."""
    if key and not (local or cloud):
        raise click.UsageError("--cloud-api-key goes with --cloud-model TYPE:NAME.")
    return await ready_client((local, cloud, key))


#: Oblix 0.1.2's model flags, shared by ``oblix chat`` and ``oblix server``.
MODEL_FLAGS = (
    click.option(
        "--local-model",
        "local_models",
        multiple=True,
        metavar="TYPE:NAME",
        help="Hook this local model for this run instead of the configured ones, e.g. ollama:llama2.",
    ),
    click.option(
        "--cloud-model",
        "cloud_models",
        multiple=True,
        metavar="TYPE:NAME",
        help="Hook this cloud model for this run, e.g. openai:gpt-4o or claude:claude-3-5-sonnet-latest.",
    ),
    click.option(
        "--cloud-api-key",
        default=None,
        help="Key for the --cloud-model (else $OPENAI_API_KEY, $ANTHROPIC_API_KEY...); never stored.",
    ),
)


def model_flags(func: Any) -> Any:
    """Add ``--local-model``, ``--cloud-model`` and ``--cloud-api-key`` to a command."""
    for option in reversed(MODEL_FLAGS):
        func = option(func)
    return func


@click.command()
@click.option("-c", "--continue", "continue_", is_flag=True, help="Resume the most recent session.")
@click.option("--session", default=None, help="Resume this session (its id or a unique start of it).")
@click.option("-m", "--model", default=None, help="Use only this model (id, bare name or alias).")
@click.option("-s", "--system", default=None, help="System prompt sent with every request (not stored).")
@preference_option
@model_flags
@handle_errors
def chat(
    continue_: bool,
    session: str | None,
    model: str | None,
    system: str | None,
    preference: str | None,
    local_models: tuple[str, ...],
    cloud_models: tuple[str, ...],
    cloud_api_key: str | None,
) -> None:
    """Interactive chat; /help lists the commands.

    Ctrl-C stops an answer (the part shown is stored, marked interrupted); Ctrl-C or
    Ctrl-D at the prompt ends the chat and prints the session id. --local-model and
    --cloud-model (Oblix 0.1.2's flags) choose the models for this chat.
    """
    if continue_ and session:
        raise click.UsageError("Give either -c/--continue or --session, not both.")

    async def main() -> None:
        from oblix_core.terminal.chat import run_chat

        async with catch_ctrl_c() as keys:  # Ctrl-C while loading or closing: ignored, no traceback
            client = await flag_client(local_models, cloud_models, cloud_api_key)
            try:
                if not client.models:  # say so now, not after every prompt
                    raise NoModelAvailableError(NO_MODEL_HINT)
                options: dict[str, Any] = {}
                if model:
                    options["model"] = resolve_model(client, model)
                elif not (local_models or cloud_models) and (default := default_model(client)):
                    options.update(model=default, fallback=True)
                if system:
                    options["system"] = system
                if preference:
                    options["preference"] = preference
                session_id = session
                if continue_:
                    session_id = await anyio.to_thread.run_sync(most_recent_session, client)
                await run_chat(client, None, session_id=session_id, **options)
            finally:
                with anyio.CancelScope(shield=True):
                    await client.shutdown()
            del keys

    anyio.run(main)


def _backend_options(client: OblixClient) -> list[dict[str, Any]]:
    rows = []
    for name, cls in sorted(client.registry.models.items()):
        per_request = cls.request_options
        rows.append(
            {
                "backend": name,
                "model_options": cls.accepted_options(),
                "request_options": ["max_tokens", "temperature"]
                + (sorted(per_request - {"max_tokens", "temperature"}) if per_request is not None else ["*"]),
            }
        )
    return rows


@click.command()
@click.option("--options", "show_options", is_flag=True, help="List each backend's options instead.")
@click.option(
    "--reset-health",
    "reset",
    is_flag=False,
    flag_value="*",
    default=None,
    metavar="[MODEL]",
    help="Put a cooling model (or, without MODEL, every model) back in service now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def models(show_options: bool, reset: str | None, as_json: bool) -> None:
    """Configured models (or the defaults), their health and what each backend sees.

    Health: ready, warming (loading), or cooling (why, and when it returns); a model
    you fixed can be put back at once with --reset-health [MODEL]. With --options: the
    options each backend takes, in config.toml [[models]] entries (model options) and
    with `oblix run -o KEY VALUE` (request options; * means any option is passed).
    """

    async def main() -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
        client = make_client()
        try:
            if not show_options:
                await hook_models(client)
            if reset is not None:
                target = None if reset == "*" else client.resolve_model(reset, what="--reset-health")
                for model_id in client.reset_model_health(target):
                    click.echo(f"{model_id}: health reset, in service", err=True)
            health = client.model_health(refresh=True)
            return (
                [m.describe() | {"health": health[m.model_id]} for m in client.models],
                sorted(client.registry.models),
                _backend_options(client),
            )
        finally:
            await client.shutdown()

    hooked, types, options = anyio.run(main)
    if show_options:
        if as_json:
            print_json(options)
            return
        rows = [
            (o["backend"], ", ".join(o["model_options"]), ", ".join(o["request_options"])) for o in options
        ]
        print_table("Backend options", OPTION_COLUMNS, rows)
        return
    if as_json:
        print_json({"models": hooked, "backends": types})
        return
    model_rows = [
        (
            m["model_id"],
            "local" if m["local"] else "cloud",
            m["context_window"],
            m.get("endpoint") or m.get("path", ""),
            _health_text(m["health"]),
        )
        for m in hooked
    ]
    print_table("Models", MODEL_COLUMNS, model_rows)
    click.echo(f"Backends installed: {', '.join(types) or 'none'}")
    if not hooked:
        click.echo(NO_MODEL_HINT, err=True)


#: The tables of ``oblix models`` and ``oblix agents``: on a narrow terminal the least useful
#: columns go first; ids and numbers are never split.
MODEL_COLUMNS = [
    Column("model", keep=100),
    Column("kind", keep=70),
    Column("context", keep=50, right=True),
    Column("where", keep=30, wraps=True),
    Column("health", keep=80, wraps=True),
]
OPTION_COLUMNS = [
    Column("backend", keep=100),
    Column("model options (config.toml)", keep=60, wraps=True),
    Column("request options (-o)", keep=50, wraps=True),
]
AGENT_COLUMNS = [
    Column("agent", keep=100),
    Column("state", keep=90),
    Column("target", keep=50),
    Column("reason", keep=70, wraps=True),
]


def _health_text(health: dict[str, Any]) -> str:
    """One model's health for the table: ready, warming, or cooling with why and when it returns."""
    if health["status"] != "cooling":
        return str(health["status"])
    return (
        f"cooling since {health['since_s']:g}s ({health['reason']}); returns {health['returns']}, "
        f"~{health['seconds_left_estimate']:g}s (--reset-health to clear)"
    )


@click.command()
@click.option("--watch", is_flag=True, help="Refresh the table live until Ctrl-C.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: a list of {agent, state, target, reason, metrics}."
)
@handle_errors
def agents(watch: bool, as_json: bool) -> None:
    """The monitoring agents' current checks."""
    from rich.live import Live

    def rows(checks: list[Any]) -> list[tuple[Any, ...]]:
        return [(c.agent, c.state, c.target or "-", c.reason) for c in checks]

    def render(checks: list[Any]) -> Any:
        return terminal_table("Agents", AGENT_COLUMNS, rows(checks), console.width)

    async def main() -> None:
        client = make_client()
        try:
            await hook_models(client, cloud_only=True)  # whose endpoints get probed
            client.hook_default_agents()
            for agent in client.agents:
                await anyio.to_thread.run_sync(agent.refresh)
            checks = client.agent_checks()
            if as_json:
                print_json([{k: v for k, v in c.to_dict().items() if k != "checked_at"} for c in checks])
                return
            if not watch:
                print_table("Agents", AGENT_COLUMNS, rows(checks))
                return
            while not stdout_is_terminal():  # a pipe: the plain table again every 2 seconds
                print_table(f"Agents at {utc_now()}", AGENT_COLUMNS, rows(client.agent_checks()), blank=True)
                await anyio.sleep(2)
            with Live(render(checks), console=console, refresh_per_second=2) as live:
                while True:
                    await anyio.sleep(1)
                    live.update(render(client.agent_checks()))
        finally:
            with anyio.CancelScope(shield=True):
                await client.shutdown()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch
        anyio.run(main)
