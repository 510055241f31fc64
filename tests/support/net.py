"""Loopback ports and servers coming up."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A free loopback port; ``with_bus``: one whose Redis Cluster bus port (+10000) is free too."""
    if not with_bus:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    low, high = _bus_range()
    for _ in range(200):
        port = random.randint(low, high)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port (with its bus port) found")


def _bus_range() -> tuple[int, int]:
    """Ports whose bus port (+10000) lies below Linux's ephemeral range (32768-) and, under
    pytest-xdist, a slice of them per worker, so that parallel workers never pick the same."""
    low, high = 20000, 22767
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = (high - low + 1) // max(count, 1)
    start = low + int(worker) % max(count, 1) * width if worker.isdigit() else low
    return start, start + width - 1


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url`` answers (any HTTP status); fails early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status still means it is up
                return
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


class LoopbackHTTPServer:
    """A threaded HTTP server on 127.0.0.1 for a test double: start/stop by hand or as a
    context manager. Subclasses set ``handler`` (a ``BaseHTTPRequestHandler`` class) and
    ``owner_attribute`` (the handler's attribute that points back to the double), and set
    ``port`` before starting. ``_release`` is set on stop, for handlers that hang on purpose."""

    handler: type[BaseHTTPRequestHandler]
    owner_attribute = "owner"
    port: int

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._release = threading.Event()

    def start(self) -> Self:
        self._release.clear()
        handler = type("Handler", (self.handler,), {self.owner_attribute: self})
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        # polled every 50 ms (not the default 0.5 s): stop() waits for the next poll, in every test
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
