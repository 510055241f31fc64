"""``oblix server --workers N``: several server processes on one port, sharing the store.

Real server processes (``tests/server_process.py``) with the ``pid`` test double model,
which answers ``[<messages received>] pid <its process id>``, so that each answer says
which worker gave it and how much history that worker read from the store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from oblix_core.client import OblixClient
from tests.server_process import ROOT, OblixServer, model_toml, write_plugin_dist
from tests.support.waiting import wait_until

ANSWER = re.compile(r"\[(\d+)\] pid (\d+)")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def server(tmp_path: Path, plugin_dir: Path) -> Iterator[OblixServer]:
    (tmp_path / "config.toml").write_text(model_toml("pid", "local"))
    with OblixServer(tmp_path, "--workers", "2", plugin_dir=plugin_dir) as srv:
        assert wait_until(lambda: srv.log().count("Application startup complete") == 2, 60)  # both ready
        yield srv


def workers(server: OblixServer) -> set[int]:
    """The worker processes: the parent's children that run the server (not multiprocessing's helpers)."""
    assert server.process is not None
    found = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def ask(server: OblixServer, text: str, session: str | None = None) -> tuple[int, int, dict[str, str]]:
    """One request on a new connection: (messages the model received, the answering pid, headers)."""
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    headers = {"X-Oblix-Session-Id": session} if session else {}
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], extra_headers=headers
    )
    client.close()  # the next request opens a new connection, which any worker may accept
    match = ANSWER.fullmatch(raw.parse().choices[0].message.content or "")
    assert match, raw.parse()
    return int(match[1]), int(match[2]), dict(raw.headers)


def test_every_worker_answers_and_all_stop_with_the_parent(server: OblixServer) -> None:
    assert server.process is not None
    pids = workers(server)
    assert len(pids) == 2 and server.process.pid not in pids
    answered = set()
    for i in range(60):
        answered.add(ask(server, f"hello {i}")[1])
        if answered == pids:
            break
    assert answered == pids  # both workers took connections; never the parent
    server.stop()
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 10)
    assert server.log().count("Oblix server worker ") == 2 and "Traceback" not in server.log()


def test_a_session_continues_on_whichever_worker_answers(server: OblixServer) -> None:
    received, pid, headers = ask(server, "my name is Ada", "new")
    session_id = headers["x-oblix-session-id"]
    assert received == 1
    answered, turns = {pid}, 0
    while turns < 11 or (answered != workers(server) and turns < 60):  # the kernel picks the worker
        turns += 1
        received, pid, _ = ask(server, f"turn {turns}", session_id)
        assert received == 2 * turns + 1  # the whole history, whichever worker wrote it
        answered.add(pid)
    assert answered == workers(server)  # both workers served this one session
    messages = OblixClient(home=server.home).load_session(session_id)["messages"]
    assert len(messages) == 2 * (turns + 1) and [m["role"] for m in messages[:2]] == ["user", "assistant"]


def test_a_worker_that_dies_is_replaced(server: OblixServer) -> None:
    before = workers(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(workers(server) - before) == 1 and len(workers(server)) == 2, 60)
    replacement = (workers(server) - before).pop()
    assert wait_until(lambda: ask(server, "who?")[1] == replacement, 30)  # it answers
    assert f"Child process [{victim}] died" in server.log()  # uvicorn's supervisor replaced it


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OBLIX_SERVER_API_KEY"} | {"OBLIX_HOME": str(tmp_path)}
    args = ["--workers", "2", "--local-model", "nosuch:model", "--port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "oblix_core", "server", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "A server worker could not start: No model backend named 'nosuch'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "the server stopped" in done.stderr
