"""Real ``redis-server`` processes for the tests: a single server, and a 3-master cluster
(optionally with replicas).

Each server listens on a free loopback port with its own data folder. ``kill()`` is a
SIGKILL (data survives through the append-only file), ``start()`` after it restarts on
the same port. Bind the fixtures in a test module to use them::

    from tests import redis_servers
    redis_server = redis_servers.redis_server
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from tests.support.net import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


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
    """``3 * (1 + replicas)`` ``--cluster-enabled`` nodes joined by ``redis-cli --cluster create``:
    three masters, each with ``replicas`` replicas (``cluster-node-timeout 2000``)."""

    def __init__(self, folder: Path, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [RedisServer(folder / f"node{i}", cluster=True) for i in range(3 * (1 + replicas))]

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
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def _ask(self, *command: str) -> Any:
        """A command answered by the first live node that answers."""
        for node in self.live():
            client = node.client()
            try:
                return client.execute_command(*command)
            except redis.ConnectionError:
                continue
            finally:
                client.close()
        raise RuntimeError("no live cluster node answers")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and, with replicas, every master
        has a replica whose link to it is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(n) for n in self.live()) and self._replicas_up():
                return
            time.sleep(0.1)
        raise TimeoutError("the redis cluster did not reach cluster_state:ok with its replicas in sync")

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        client = node.client()
        try:
            return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def _replicas_up(self) -> bool:
        if not self.replicas:
            return True
        for master in self.masters():
            client = master.client()
            try:
                info = client.info("replication")
            except redis.ConnectionError:
                return False
            finally:
                client.close()
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if sum(1 for v in online if v.get("state") == "online") < self.replicas:
                return False
        return True

    def masters(self) -> list[RedisServer]:
        """The nodes serving slots now (from CLUSTER SLOTS)."""
        ports = {int(entry[2][1]) for entry in self._ask("CLUSTER", "SLOTS")}
        return [n for n in self.nodes if n.port in ports]

    def master_for(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        slot = key_slot(key.encode())
        for first, last, master, *_ in self._ask("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"slot {slot} is not served")

    def replica_of(self, master: RedisServer) -> RedisServer:
        client = master.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        ports = [int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return next(n for n in self.nodes if n.port in ports)

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
