"""One server process: hook the models, build the app and serve it with uvicorn, on uvloop if installed.

:class:`Launch` holds everything a process needs to serve, so that ``--workers`` can hand
it to each worker process (it pickles).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import attrs
import click

from oblix.plugin import ConfigError, command_client
from oblix_server.settings import ServerSettings


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


def run(
    launch: Launch, sockets: list[socket.socket] | None = None, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve in this process until SIGINT or SIGTERM (see :func:`serve`).

    uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the
    handler it found: with the default one the process would die there, before the
    client shuts down (queued usage records, open models and stores). Here that second
    SIGTERM exits through Python instead (status 143), running ``client.shutdown()``.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        with asyncio.Runner(loop_factory=loop_factory(launch.loop)) as runner:
            runner.run(serve(launch, sockets, on_ready))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


async def serve(
    launch: Launch, sockets: list[socket.socket] | None = None, on_ready: Callable[[], None] | None = None
) -> None:
    """Hook the configured models (or the launch's ``TYPE:NAME`` specs) and agents; serve.

    ``sockets``: listen on these (a worker's share of the parent's socket) instead of
    binding ``host:port``; ``on_ready`` is called once the server accepts connections.
    """
    import uvicorn  # the plugin loads only with its extra (needs() in oblix_server/__init__)

    from oblix_server.app import create_app
    from oblix_server.protocols import uvicorn_options

    settings = launch.settings
    client = command_client()
    try:
        if launch.preference:
            client.preference = launch.preference
        local, cloud, key = launch.local_models, launch.cloud_models, launch.cloud_api_key
        hooked = await (
            client.hook_model_specs(local, cloud, key) if local or cloud else client.hook_configured_models()
        )
        client.hook_default_agents()
        await client.warm_up()  # a server loads its in-process models before the first request
        app = create_app(client, settings)
        who = f"Oblix server worker {os.getpid()}" if launch.workers > 1 else "Oblix server"
        click.echo(
            f"{who} on http://{settings.host}:{settings.port}/v1"
            f" · models: {', '.join(hooked) or 'none'} · store: {client.store.name}"
            f" · API key: {'required' if settings.api_key else 'off'}",
            err=True,
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=launch.log_level,
            lifespan="off",
            timeout_graceful_shutdown=5,
            **uvicorn_options(settings, launch.http),
        )
        await _server(config, on_ready).serve(sockets)
    finally:
        await client.shutdown()


def _server(config: Any, on_ready: Callable[[], None] | None) -> Any:
    """uvicorn's server, calling ``on_ready`` once it listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready()

    return Server(config)
