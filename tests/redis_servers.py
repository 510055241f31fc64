"""Real ``redis-server`` processes for the tests: a single server and a 3-master cluster.

Each server listens on a free loopback port with its own data folder. ``kill()`` is a
SIGKILL (data survives through the append-only file), ``start()`` after it restarts on
the same port. Bind the fixtures in a test module to use them::

    from tests import redis_servers
    redis_server = redis_servers.redis_server
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A free loopback port (and, ``with_bus``, its cluster bus port + 10000 free too)."""
    for _ in range(200):
        port = random.randint(20000, 29999) if with_bus else random.randint(30000, 55000)
        if _port_free(port) and (not with_bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


class _PortTaken(RuntimeError):
    pass


class RedisServer:
    """One ``redis-server`` subprocess on 127.0.0.1 with ``--appendonly yes``."""

    def __init__(
        self, folder: Path, port: int | None = None, password: str | None = None, cluster: bool = False
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(with_bus=cluster)
        self._pick_port = port is None and not cluster
        self.password = password
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True)

    def start(self, attempts: int = 3) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers."""
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "2000"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except _PortTaken:  # another test run took the port since we checked it
            if not self._pick_port or attempts <= 1:
                raise
            self.port = free_port()
            return self.start(attempts - 1)
        self._pick_port = False  # from now on it restarts on this port
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    error = _PortTaken if "already in use" in log else RuntimeError
                    raise error(f"redis-server exited with {self.process.returncode}:\n{log}")
                try:
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"redis-server on port {self.port} did not come up in {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()


class RedisClusterServers:
    """Three ``--cluster-enabled`` masters joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, folder: Path) -> None:
        self.nodes = [RedisServer(folder / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait_ok()
        return self

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = node.client()
                try:
                    info = str(client.execute_command("CLUSTER", "INFO"))
                    states.append("cluster_state:ok" in info)
                finally:
                    client.close()
            if all(states):
                return
            time.sleep(0.1)
        raise TimeoutError("the redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server shared by the tests (each test uses its own key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster shared by the tests (each test uses its own key prefix)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


def unique_prefix() -> str:
    """A key namespace no other test uses (a fresh, empty store on a shared server)."""
    return f"test-{uuid.uuid4().hex[:12]}:"
