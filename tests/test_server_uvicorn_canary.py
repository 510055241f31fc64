"""A canary for what ``oblix server``'s connection guard relies on in uvicorn (issue 27).

``pyproject.toml`` pins uvicorn to the minor these tests pass on. Each test names one
thing :mod:`oblix_server.connections`, :mod:`oblix_server.protocols` and
:mod:`oblix_server.workers` take from uvicorn's public surface; if a uvicorn release
changes it, the test says which, before any server misbehaves. Live checks run a real
uvicorn server in a thread, on real sockets, with each parser.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.config import HTTP_PROTOCOLS, STARTUP_FAILURE
from uvicorn.importer import import_from_string
from uvicorn.supervisors import Multiprocess, multiprocess

from oblix_server.connections import CURRENT, GuardedConnection, TrackedApp
from oblix_server.protocols import uvicorn_options
from oblix_server.settings import ServerSettings
from tests.support.net import free_port

TESTED_MINOR = "0.55."
PARSERS = ["httptools", "h11"]


def test_uvicorn_is_the_minor_the_guard_was_tested_on() -> None:
    assert uvicorn.__version__.startswith(TESTED_MINOR), (
        f"uvicorn {uvicorn.__version__}: run these canaries and the server tests, then move the pin in "
        "pyproject.toml's [server] extra and TESTED_MINOR here"
    )


@pytest.mark.parametrize("name", PARSERS)
def test_uvicorn_names_its_protocols_in_its_public_table(name: str) -> None:
    protocol = import_from_string(HTTP_PROTOCOLS[name])
    assert issubclass(protocol, asyncio.Protocol)
    for method in ("connection_made", "connection_lost", "data_received", "eof_received"):
        assert callable(getattr(protocol, method)), method
    for method in ("pause_writing", "resume_writing", "shutdown"):  # flow control, graceful shutdown
        assert callable(getattr(protocol, method)), method
    keywords = set(inspect.signature(protocol).parameters)
    assert {"config", "server_state"} <= keywords  # what the guard reads from uvicorn's call


def test_config_takes_a_protocol_factory_and_the_options_the_server_passes() -> None:
    options = uvicorn_options(ServerSettings(), "h11")
    config = uvicorn.Config(TrackedApp(lambda *a: None), lifespan="off", log_level="warning", **options)
    config.load()
    assert config.http_protocol_class is options["http"]  # the guard itself, not a class of uvicorn's
    assert config.h11_max_incomplete_event_size == options["h11_max_incomplete_event_size"]
    assert config.timeout_keep_alive == options["timeout_keep_alive"] and config.backlog == options["backlog"]


def test_the_supervisor_reports_a_worker_that_could_not_start() -> None:
    """``oblix server --workers`` reads ``Multiprocess.processes[i].exitcode == STARTUP_FAILURE``."""
    assert STARTUP_FAILURE == 3
    config = uvicorn.Config("tests.nowhere:app", workers=2, log_level="warning")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        supervisor = Multiprocess(config, sockets=[])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert supervisor.processes == []  # filled with one Process per worker, each with an exitcode
    assert isinstance(inspect.getattr_static(multiprocess.Process, "exitcode"), property)
    assert callable(config.bind_socket)


class _Recorder:
    """An ASGI app that records the guarded connection its request task sees, and answers 200;
    ``POST /slow`` reads its body (which the test never finishes)."""

    def __init__(self) -> None:
        self.seen: list[GuardedConnection | None] = []
        self.reading = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(CURRENT.get())
        if scope["path"] == "/slow":
            self.reading.set()
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=PARSERS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[_Recorder, uvicorn.Server, threading.Thread]]:
    app, port = _Recorder(), free_port()
    options = uvicorn_options(ServerSettings(), request.param)
    config = uvicorn.Config(
        TrackedApp(app),
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=60,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.02)
    try:
        yield app, server, thread
    finally:
        server.should_exit = True
        thread.join(60)


def _port(server: uvicorn.Server) -> int:
    return int(server.config.port)


def test_the_request_task_inherits_the_connection_and_the_guard_stands_in_uvicorns_table(
    served: tuple[_Recorder, uvicorn.Server, threading.Thread],
) -> None:
    app, server, _ = served
    request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
        sock.sendall(request * 2)  # two pipelined requests on one connection
        received = b""
        while received.count(b"ok") < 2:
            received += sock.recv(65536)
        connections = list(server.server_state.connections)
    assert len(app.seen) == 2 and isinstance(app.seen[0], GuardedConnection) and app.seen[0] is app.seen[1]
    assert connections == [app.seen[0]]  # uvicorn's shutdown asks the guard, not its own protocol


def test_uvicorns_shutdown_asks_the_guard(
    served: tuple[_Recorder, uvicorn.Server, threading.Thread], caplog: pytest.LogCaptureFixture
) -> None:
    app, server, thread = served
    head = b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"
    with (
        caplog.at_level(logging.WARNING),
        socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock,
    ):
        sock.sendall(head)
        assert app.reading.wait(10)
        server.should_exit = True
        assert sock.recv(65536) == b""  # closed by the guard, not after the 60 s grace period
        thread.join(60)
    messages = [record.getMessage() for record in caplog.records]
    assert any("still sending a request body at shutdown" in m for m in messages), messages
    assert not any("timeout graceful shutdown exceeded" in m for m in messages)
