"""Retried requests answered once while servers are killed (issue 31's fault trial).

Real ``oblix server`` processes share one store: three on one redis-server, two on one S3
bucket (moto's server), one with ``--workers 2`` on the file store. A client sends the turns
of one session with the official ``openai`` client (``max_retries`` on, each turn's
``Idempotency-Key`` in ``extra_headers``), moving to another server when one is gone. Two
kinds of kill land meanwhile:

* a killer thread SIGKILLs a random server (or worker) every 0.5-1.5 s, at whatever point
  of a request it is;
* the store kills its own process right after it stored an exchange, with probability
  ``DIE_P`` (``tests/reliability/dying_stores.py``): the turn is stored, the reply never
  sent, the result not kept under its key — the window a random kill rarely hits.

Killed servers are restarted (uvicorn's supervisor replaces a killed worker). At the end
every turn must be in the session exactly once, in order, each answered, and the usage
ledger must count each turn once. The trial runs until each store saw at least
``MIN_KILLS`` kills (at least 100 across the three).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from oblix_core.client import OblixClient
from tests import redis_servers
from tests.redis_servers import RedisServer, unique_prefix
from tests.s3_server import S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures
from tests.server_process import OblixServer, model_toml

redis_server = redis_servers.redis_server
pytestmark = pytest.mark.slow

KEY = "sk-oblix-kill-trial-5d9e"
MIN_KILLS = 34
MIN_TURNS = 40
DIE_P = 0.2
DEADLINE_S = 420


def write_plugin(folder: Path) -> Path:
    dist = folder / "oblix_dying_stores-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: oblix-dying-stores\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[oblix]\ndying = tests.reliability.dying_stores\n")
    return folder


def config(store: str, options: dict[str, str]) -> str:
    opts = ", ".join(f'{k} = "{v}"' for k, v in options.items())
    return (
        model_toml("paced", "local", tokens=4, delay=0.02)
        + f'[sessions]\nstore = "{store}"\noptions = {{ {opts} }}\n'
        + "[execution]\nidempotency_wait = 2\nfirst_token_timeout = 1\n"
    )


class Fleet:
    """The servers of one trial; ``restart_dead`` counts and replaces the ones that died."""

    def __init__(self, servers: list[OblixServer], workers: bool) -> None:
        self.servers, self.workers, self.kills = servers, workers, 0
        self.lock = threading.Lock()
        self.worker_pids = self._workers() if workers else set()

    def _workers(self) -> set[int]:
        assert self.servers[0].process is not None
        return {c.pid for c in psutil.Process(self.servers[0].process.pid).children()}

    def kill_one(self) -> None:
        if self.workers:
            pids = list(self._workers())
            if pids:
                os.kill(random.choice(pids), signal.SIGKILL)
            return
        with self.lock:
            live = [s for s in self.servers if s.process is not None and s.process.poll() is None]
            if len(live) > 1:  # keep one serving
                process = random.choice(live).process
                assert process is not None
                process.send_signal(signal.SIGKILL)

    def restart_dead(self) -> None:
        if self.workers:
            now = self._workers()
            with self.lock:
                self.kills += len(self.worker_pids - now)
                self.worker_pids = now
            return
        for srv in self.servers:
            if srv.process is not None and srv.process.poll() is None:
                continue
            if srv.process is not None:  # it died (killed by the killer, or by its store)
                with self.lock:
                    self.kills += 1
                srv.process = None
            try:
                srv.start()
            except RuntimeError:  # killed while starting: counted, started again next round
                srv.process = None


def send_turn(fleet: Fleet, turn: int, session: str) -> str:
    """Send one turn until some server answers it; returns the session id it names."""
    headers = {"Idempotency-Key": f"turn-{turn}", "X-Oblix-Session-Id": session}
    for attempt in range(200):
        srv = fleet.servers[attempt % len(fleet.servers)]
        client = openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=2, timeout=20)
        try:
            response = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"turn {turn}"}], extra_headers=headers
            )
            return response.headers["X-Oblix-Session-Id"]
        except openai.ConflictError:  # the first try still runs (or its process died): wait for it
            time.sleep(0.5)
        except (openai.APIConnectionError, openai.InternalServerError, openai.APITimeoutError):
            time.sleep(0.2)
    raise AssertionError(f"turn {turn} was never answered")


def run_trial(fleet: Fleet) -> tuple[str, int]:
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(random.uniform(0.5, 1.5)):
            fleet.kill_one()

    def keeper() -> None:
        while not stop.wait(0.2):
            fleet.restart_dead()

    threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=keeper, daemon=True)]
    for thread in threads:
        thread.start()
    session, turn, started = "new", 0, time.monotonic()
    try:
        while fleet.kills < MIN_KILLS or turn < MIN_TURNS:
            assert time.monotonic() - started < DEADLINE_S, f"{fleet.kills} kills in {turn} turns"
            session = send_turn(fleet, turn, session)
            turn += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    fleet.restart_dead()
    return session, turn


def check(home: Path, fleet: Fleet, session: str, turns: int, store: str, options: dict[str, str]) -> None:
    srv = next(s for s in fleet.servers if s.process is not None and s.process.poll() is None)
    reader = OblixClient(home=home, session_store=store, store_options=options)
    stored = reader.load_session(session)
    users = [m["content"] for m in stored["messages"] if m["role"] == "user"]
    assert users == [f"turn {i}" for i in range(turns)], "a turn is missing, repeated or out of order"
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * turns
    usage = httpx.get(f"{srv.base_url}/oblix/usage?since=1d", headers=srv.auth, timeout=30).json()
    assert usage["total"]["requests"] == turns, "the ledger must count each turn once"


@pytest.fixture
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin(tmp_path_factory.mktemp("dying"))


def _fleet(home: Path, plugin: Path, count: int, *args: str) -> Iterator[Fleet]:
    env = {"OBLIX_TEST_DIE_AFTER_WRITE": str(DIE_P)}
    servers = [OblixServer(home, *args, plugin_dir=plugin, api_key=KEY, env=env) for _ in range(count)]
    for srv in servers:
        srv.start()
    try:
        yield Fleet(servers, workers="--workers" in args)
    finally:
        for srv in servers:
            srv.stop()


def test_redis_three_servers(tmp_path: Path, plugin: Path, redis_server: RedisServer) -> None:
    home = tmp_path / "home"
    home.mkdir()
    options = {"url": redis_server.url, "prefix": unique_prefix()}
    (home / "config.toml").write_text(config("dying_redis", options))
    for fleet in _fleet(home, plugin, 3):
        session, turns = run_trial(fleet)
        check(home, fleet, session, turns, "redis", options)
        assert fleet.kills >= MIN_KILLS


def test_s3_two_servers(tmp_path: Path, plugin: Path, server: S3Server) -> None:
    home = tmp_path / "home"
    home.mkdir()
    options = {"bucket": new_bucket(server.url), "endpoint_url": server.url}
    (home / "config.toml").write_text(config("dying_s3", options))
    for fleet in _fleet(home, plugin, 2):
        session, turns = run_trial(fleet)
        check(home, fleet, session, turns, "s3", options)
        assert fleet.kills >= MIN_KILLS


def test_file_store_two_workers(tmp_path: Path, plugin: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    options = {"root": str(home / "sessions")}
    (home / "config.toml").write_text(config("dying_file", options))
    for fleet in _fleet(home, plugin, 1, "--workers", "2"):
        session, turns = run_trial(fleet)
        check(home, fleet, session, turns, "file", options)
        assert fleet.kills >= MIN_KILLS
