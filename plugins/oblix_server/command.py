"""``oblix server``: serve the configured models over an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Any

import click

from oblix.plugin import ROUTING_PREFERENCES, handle_errors
from oblix_server.connection_options import connection_options
from oblix_server.settings import HTTP_IMPLEMENTATIONS, KEY_ENV, LOOPS, ServerSettings

#: The options' defaults are the settings' own (one place says what the server starts with).
_DEFAULTS = ServerSettings()


@click.command()
@click.option(
    "--local-model",
    "local_models",
    multiple=True,
    metavar="TYPE:NAME",
    help="Serve this local model instead of the configured ones (Oblix 0.1.2's flag), e.g. ollama:llama2.",
)
@click.option(
    "--cloud-model",
    "cloud_models",
    multiple=True,
    metavar="TYPE:NAME",
    help="Serve this cloud model, e.g. openai:gpt-4o or claude:claude-3-5-sonnet-latest.",
)
@click.option(
    "--cloud-api-key",
    default=None,
    help="Key for the --cloud-model (else the provider's environment variable); never stored.",
)
@click.option(
    "--preference",
    type=click.Choice(ROUTING_PREFERENCES),
    default=None,
    help="Routing preference of requests that name no model, overriding config.toml.",
)
@click.option("--host", default=_DEFAULTS.host, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=_DEFAULTS.port, show_default=True)
@click.option(
    "--api-key",
    envvar=KEY_ENV,
    default=None,
    help=f"Key clients must send as 'Authorization: Bearer <key>' (or ${KEY_ENV}), at least 8 "
    "characters. Required to listen on a non-loopback address.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(1),
    default=_DEFAULTS.max_concurrency,
    show_default=True,
    help="Requests answered at once; more wait in the queue.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(0),
    default=_DEFAULTS.queue_size,
    show_default=True,
    help="Requests that may wait for a slot; beyond it, 429.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0),
    default=_DEFAULTS.queue_timeout,
    show_default=True,
    help="Seconds a request may wait for a slot before a 429.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1024),
    default=_DEFAULTS.max_body_bytes,
    show_default=True,
    help="Largest request body; larger ones get 413.",
)
@click.option(
    "--store-all",
    is_flag=True,
    default=_DEFAULTS.store_all,
    help="Store requests without X-Oblix-Session-Id in new sessions.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Server processes sharing the port and the store; limits apply to each.",
)
@click.option(
    "--http",
    type=click.Choice(HTTP_IMPLEMENTATIONS),
    default="auto",
    show_default=True,
    help="HTTP/1.1 parser: httptools (C; auto when installed) or h11 (pure Python).",
)
@click.option(
    "--loop",
    type=click.Choice(LOOPS),
    default="auto",
    show_default=True,
    help="Event loop: uvloop (auto when installed) or asyncio's own.",
)
@connection_options
@handle_errors
def server(
    local_models: tuple[str, ...],
    cloud_models: tuple[str, ...],
    cloud_api_key: str | None,
    preference: str | None,
    host: str,
    port: int,
    api_key: str | None,
    max_concurrency: int,
    queue_size: int,
    queue_timeout: float,
    max_body_bytes: int,
    store_all: bool,
    log_level: str,
    workers: int,
    http: str,
    loop: str,
    **connection_limits: Any,
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
        **connection_limits,
    )
    settings.check()
    if cloud_api_key and not cloud_models:
        raise click.UsageError("--cloud-api-key goes with --cloud-model TYPE:NAME.")
    from oblix_server.serving import Launch, run  # imported here: the CLI starts without uvicorn
    from oblix_server.workers import run_workers

    launch = Launch(
        settings, log_level, local_models, cloud_models, cloud_api_key, preference, http, loop, workers
    )

    if workers > 1:
        run_workers(launch)
    else:
        run(launch)
