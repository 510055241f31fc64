"""``oblix run``, ``oblix chat`` and ``oblix models``: the main job from a terminal."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import click

from oblix_core.cli import handle_errors, make_client, print_json, print_table


async def _ready_client() -> Any:
    """A client with the configured (or default) models hooked and the agents running."""
    client = make_client()
    try:
        await client.hook_configured_models()
        client.hook_default_agents()
    except BaseException:
        await client.shutdown()
        raise
    return client


@click.command()
@click.argument("prompt")
@click.option("--session", "session_id", default=None, help="Continue this session (default: a new one).")
@click.option("--model", default=None, help="Use only this model id, e.g. llama_cpp:gemma-3-270m.")
@click.option("--max-tokens", type=int, default=None, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature.")
@click.option("--local-only", is_flag=True, help="Never send this prompt to a cloud model.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON instead of streaming.")
@handle_errors
def run(
    prompt: str,
    session_id: str | None,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    local_only: bool,
    as_json: bool,
) -> None:
    """Answer PROMPT (streamed to the terminal) and store it in a session."""

    async def main() -> dict[str, Any]:
        client = await _ready_client()
        try:
            options: dict[str, Any] = {"local_only": local_only}
            if model:
                options["model"] = model
            return await client.execute(
                prompt,
                temperature=temperature,
                max_tokens=max_tokens,
                session_id=session_id,
                stream=not as_json,
                **options,
            )
        finally:
            await client.shutdown()

    result = anyio.run(main)
    if as_json:
        print_json(result)
    else:
        metrics = result["metrics"]
        click.echo(
            f"[{result['model_id']} · {metrics['output_tokens']} tokens · "
            f"{metrics.get('tokens_per_second') or '-'} tok/s · session {result['session_id']}]",
            err=True,
        )


@click.command()
@click.option("--session", "session_id", default=None, help="Resume this session (default: a new one).")
@click.option("--model", default=None, help="Use only this model id.")
@handle_errors
def chat(session_id: str | None, model: str | None) -> None:
    """Interactive chat; /help lists the commands."""

    async def main() -> None:
        client = await _ready_client()
        try:
            options: dict[str, Any] = {"model": model} if model else {}
            from oblix_core.chat import run_chat

            await run_chat(client, None, session_id=session_id, **options)
        finally:
            await client.shutdown()

    anyio.run(main)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def models(as_json: bool) -> None:
    """Configured models (or the defaults) and what each backend sees."""

    async def main() -> tuple[list[dict[str, Any]], list[str]]:
        client = make_client()
        try:
            await client.hook_configured_models()
            return [m.describe() for m in client.models], sorted(client.registry.models)
        finally:
            await client.shutdown()

    hooked, types = anyio.run(main)
    if as_json:
        print_json({"models": hooked, "backends": types})
        return
    rows = [
        (
            m["model_id"],
            "local" if m["local"] else "cloud",
            m["context_window"],
            m.get("endpoint") or m.get("path", ""),
        )
        for m in hooked
    ]
    print_table("Models", ["model", "kind", "context", "where"], rows)
    click.echo(f"Backends installed: {', '.join(types)}")


@click.command()
@click.option("--watch", is_flag=True, help="Refresh the table live until Ctrl-C.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: a list of {agent, state, target, reason, metrics}."
)
@handle_errors
def agents(watch: bool, as_json: bool) -> None:
    """The monitoring agents' current checks."""
    from rich.live import Live

    from oblix_core.cli import console

    def render(checks: list[Any]) -> Any:
        from rich.table import Table

        table = Table(title="Agents")
        for column in ("agent", "state", "target", "reason"):
            table.add_column(column)
        for c in checks:
            table.add_row(c.agent, c.state, c.target or "-", c.reason)
        return table

    async def main() -> None:
        client = make_client()
        try:
            await client.hook_configured_models(cloud_only=True)  # whose endpoints get probed
            client.hook_default_agents()
            for agent in client.agents:
                await anyio.to_thread.run_sync(agent.refresh)
            checks = client.agent_checks()
            if as_json:
                print_json([{k: v for k, v in c.to_dict().items() if k != "checked_at"} for c in checks])
                return
            if not watch:
                console.print(render(checks))
                return
            with Live(render(checks), console=console, refresh_per_second=2) as live:
                while True:
                    await anyio.sleep(1)
                    live.update(render(client.agent_checks()))
        finally:
            await client.shutdown()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch
        anyio.run(main)
