"""Serving with uvicorn: one process (:func:`run`) or ``--workers N`` under uvicorn's own supervisor
(:mod:`oblix_server.workers`).

:class:`Launch` holds everything a process needs to serve; it pickles, so uvicorn's worker
processes receive it with their configuration.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
import click
import uvicorn  # the plugin loads only with its extra (needs() in oblix_server/__init__)

from oblix.plugin import ConfigError, OblixClient, command_client
from oblix_server.protocols import uvicorn_options
from oblix_server.settings import ServerSettings

#: Seconds uvicorn's graceful shutdown waits for requests in flight.
GRACEFUL_SHUTDOWN = 5


@attrs.frozen
class Launch:
    """How to serve: the settings and the command's other choices."""

    settings: ServerSettings
    log_level: str = "info"
    local_models: tuple[str, ...] = ()
    cloud_models: tuple[str, ...] = ()
    cloud_api_key: str | None = attrs.field(default=None, repr=False)
    preference: str | None = None
    http: str = "auto"
    loop: str = "auto"
    workers: int = 1


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``loop`` (``None``: asyncio's own); uvloop for ``auto`` when installed."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigError("--loop uvloop needs uvloop: pip install uvloop (Linux and macOS).") from None
        return None
    return uvloop.new_event_loop


def uvicorn_config(launch: Launch, app: Any, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``launch`` serving ``app``, the connection guard in place."""
    settings = launch.settings
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": launch.log_level,
        "lifespan": "off",
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        "loop": "asyncio" if loop_factory(launch.loop) is None else "uvloop",
        **uvicorn_options(settings, launch.http),
    }
    return uvicorn.Config(app, **(options | overrides))


async def prepare(client: OblixClient, launch: Launch) -> Any:
    """Hook the configured models (or the launch's ``TYPE:NAME`` specs) and agents, load the local
    ones, and build the app; announce it."""
    from oblix_server.app import create_app

    if launch.preference:
        client.preference = launch.preference
    local, cloud, key = launch.local_models, launch.cloud_models, launch.cloud_api_key
    hooked = await (
        client.hook_model_specs(local, cloud, key) if local or cloud else client.hook_configured_models()
    )
    client.hook_default_agents()
    await client.warm_up()  # a server loads its in-process models before the first request
    app = create_app(client, launch.settings)
    settings = launch.settings
    who = f"Oblix server worker {os.getpid()}" if launch.workers > 1 else "Oblix server"
    click.echo(
        f"{who} on http://{settings.host}:{settings.port}/v1"
        f" · models: {', '.join(hooked) or 'none'} · store: {client.store.name}"
        f" · API key: {'required' if settings.api_key else 'off'}",
        err=True,
    )
    return app


def run(launch: Launch) -> None:
    """Serve in this process until SIGINT or SIGTERM (see :func:`serve`).

    uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the
    handler it found: with the default one the process would die there, before the
    client shuts down (queued usage records, open models and stores). Here that second
    SIGTERM exits through Python instead (status 143), running ``client.shutdown()``.
    """
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with asyncio.Runner(loop_factory=loop_factory(launch.loop)) as runner:
            runner.run(serve(launch))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


async def serve(launch: Launch) -> None:
    """Prepare the client and the app, then serve them with uvicorn until told to stop."""
    client = command_client()
    try:
        app = await prepare(client, launch)
        await uvicorn.Server(uvicorn_config(launch, app)).serve()
    finally:
        await client.shutdown()
