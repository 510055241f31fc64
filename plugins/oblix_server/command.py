"""``oblix server``: serve the configured models over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import asyncio
import logging

import click

from oblix_core.cli_common import handle_errors, make_client
from oblix_core.errors import ConfigError
from oblix_server.settings import DEFAULT_BODY_LIMIT, KEY_ENV, ServerSettings

log = logging.getLogger("oblix_server")


async def serve(settings: ServerSettings, log_level: str) -> None:
    """Hook the configured models and agents, then serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("oblix server needs its extra: pip install 'oblix[server]'.") from None
    from oblix_server.app import create_app
    client = make_client()
    try:
        hooked = await client.hook_configured_models()
        client.hook_default_agents()
        app = create_app(client, settings)
        click.echo(
            f"Oblix server on http://{settings.host}:{settings.port}/v1"
            f" · models: {', '.join(hooked) or 'none'} · store: {client.store.name}"
            f" · API key: {'required' if settings.api_key else 'off'}",
            err=True,
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        await uvicorn.Server(config).serve()
    finally:
        await client.shutdown()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar=KEY_ENV,
    default=None,
    help=f"Key clients must send as 'Authorization: Bearer <key>' (or ${KEY_ENV}). "
    "Required to listen on a non-loopback address.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Requests answered at once; more wait in the queue.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(0),
    default=64,
    show_default=True,
    help="Requests that may wait for a slot; beyond it, 429.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds a request may wait for a slot before a 429.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1024),
    default=DEFAULT_BODY_LIMIT,
    show_default=True,
    help="Largest request body; larger ones get 413.",
)
@click.option("--store-all", is_flag=True, help="Store requests without X-Oblix-Session-Id in new sessions.")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@handle_errors
def server(
    host: str,
    port: int,
    api_key: str | None,
    max_concurrency: int,
    queue_size: int,
    queue_timeout: float,
    max_body_bytes: int,
    store_all: bool,
    log_level: str,
) -> None:
    """Serve the configured models as an OpenAI-compatible API (/v1/chat/completions)."""
    settings = ServerSettings(
        host=host,
        port=port,
        api_key=api_key or None,
        max_concurrency=max_concurrency,
        queue_size=queue_size,
        queue_timeout=queue_timeout,
        max_body_bytes=max_body_bytes,
        store_all=store_all,
    )
    settings.check()
    asyncio.run(serve(settings, log_level))
