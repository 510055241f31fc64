"""The agent contract suite (``oblix.testing.AgentContract``) on the first-party agents: the real
psutil monitor, and the connectivity agent probing a loopback TCP server the test starts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from oblix.agents import ConnectivityAgent, ResourceMonitor
from oblix.plugin import BaseAgent
from oblix.testing import AgentContract


class TestResourceMonitor(AgentContract):
    @pytest.fixture
    def agent(self) -> BaseAgent:
        return ResourceMonitor(interval=0.05)


@pytest.fixture
def loopback_endpoint() -> Iterator[str]:
    """A real TCP listener on 127.0.0.1 that accepts and closes connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    server.close()


class TestConnectivityAgent(AgentContract):
    @pytest.fixture
    def agent(self, loopback_endpoint: str) -> BaseAgent:
        return ConnectivityAgent(endpoints=[loopback_endpoint], check_interval=0.05)
