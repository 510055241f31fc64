"""How ``oblix server`` learns that a client left: :class:`CancelOnDisconnect` and the protocols' hook.

The server's connection guard (:mod:`oblix_server.connections`, over uvicorn's httptools
and h11 protocols) puts a disconnect hook in each request's scope through
:class:`~oblix_server.connections.TrackedApp`, so that stopping a generation when the client
leaves needs no watcher task; without the hook (another ASGI server) a watcher task reads
``http.disconnect``. Both ways are tested here, the hook on a real uvicorn server and
real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from oblix_server.connections import TrackedApp
from oblix_server.disconnect import DISCONNECT_HOOK, CancelOnDisconnect
from oblix_server.protocols import uvicorn_options
from oblix_server.settings import ServerSettings
from tests.support.net import free_port

REQUEST = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


async def _receive_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_without_a_disconnect_the_block_runs_to_its_end() -> None:
    withdrawn = []

    def hook(callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: withdrawn.append(callback)

    async def main() -> None:
        with CancelOnDisconnect({"extensions": {DISCONNECT_HOOK: hook}}, _receive_body) as watch:
            await asyncio.sleep(0)
        assert not watch.disconnected and len(withdrawn) == 1  # the callback is withdrawn

    asyncio.run(main())


def test_the_hook_cancels_the_block_when_the_connection_is_lost() -> None:
    callbacks: list[Callable[[], None]] = []

    async def main() -> None:
        scope = {"extensions": {DISCONNECT_HOOK: lambda cb: callbacks.append(cb) or (lambda: None)}}
        asyncio.get_running_loop().call_later(0.05, lambda: callbacks[0]())
        with CancelOnDisconnect(scope, _receive_body) as watch:
            await asyncio.sleep(30)
        assert watch.disconnected

    asyncio.run(asyncio.wait_for(main(), 10))


def test_without_the_hook_a_watcher_reads_http_disconnect() -> None:
    async def main() -> None:
        left = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, left.set)

        async def receive() -> dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        with CancelOnDisconnect({}, receive) as watch:
            await asyncio.sleep(30)
        assert watch.disconnected

    asyncio.run(asyncio.wait_for(main(), 10))


class _HookApp:
    """Reads the body, registers a disconnect callback through the hook, then waits for ever."""

    def __init__(self) -> None:
        self.had_hook = threading.Event()
        self.lost = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        hook = scope.get("extensions", {}).get(DISCONNECT_HOOK)
        if hook is None:
            return
        self.had_hook.set()
        hook(self.lost.set)
        await asyncio.Event().wait()


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[_HookApp, int]]:
    app, port = _HookApp(), free_port()
    options = uvicorn_options(ServerSettings(), request.param)
    config = uvicorn.Config(TrackedApp(app), port=port, log_level="warning", lifespan="off", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.02)
        yield app, port
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)


def test_the_protocols_call_the_hook_when_the_client_leaves(served: tuple[_HookApp, int]) -> None:
    app, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUEST)
        assert app.had_hook.wait(10)  # the request's scope carried the hook
        assert not app.lost.is_set()
    assert app.lost.wait(10)  # closing the socket called the registered callback
