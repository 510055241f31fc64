"""``oblix server --workers N``: N processes on one port, under uvicorn's own supervisor.

uvicorn's ``Multiprocess`` binds the socket, starts the workers (each a fresh Python
process given the pickled configuration), replaces a worker that dies, stops the
server when one cannot start, and stops them all on SIGINT or SIGTERM. Each worker
builds its client and app in the ASGI lifespan startup (:class:`WorkerApp`): the models
are hooked and loaded there, and an error stops that worker with one line saying why.
"""

from __future__ import annotations

import click
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from oblix.plugin import ConfigError, OblixClient, OblixError, command_client
from oblix_server.serving import Launch, prepare, uvicorn_config


class WorkerApp:
    """The ASGI app of one worker: the client and the server app are made at lifespan startup and
    closed at lifespan shutdown."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.client: OblixClient | None = None
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.app is not None  # uvicorn serves only after the lifespan startup
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.client = command_client()
                    self.app = await prepare(self.client, self.launch)
                except (OblixError, OSError) as exc:
                    await self._shutdown()
                    text = f"A server worker could not start: {exc or type(exc).__name__}"
                    await send({"type": "lifespan.startup.failed", "message": text})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _shutdown(self) -> None:
        if self.client is not None:
            await self.client.shutdown()
            self.client = None


class WorkerFactory:
    """uvicorn's app factory (``factory=True``), pickled to each worker: a fresh :class:`WorkerApp`."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch

    def __call__(self) -> WorkerApp:
        return WorkerApp(self.launch)


def run_workers(launch: Launch) -> None:
    """Serve with ``launch.workers`` processes until SIGINT or SIGTERM; a :class:`ConfigError` if a
    worker could not start."""
    config = uvicorn_config(
        launch, WorkerFactory(launch), factory=True, lifespan="on", workers=launch.workers
    )
    sock = config.bind_socket()
    settings = launch.settings
    click.echo(
        f"Oblix server on http://{settings.host}:{settings.port}/v1 · {launch.workers} workers",
        err=True,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise ConfigError("A server worker could not start (its error is above); the server stopped.")
