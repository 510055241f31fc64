"""Health you can see and clear: `oblix models` shows a cooling endpoint (why, when it returns),
`--reset-health` puts it back at once for every process, and the cooling error says how."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.openai_loopback import LoopbackOpenAI
from tests.support import commands


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[LoopbackOpenAI, Path]]:
    with LoopbackOpenAI(mode="503", answer="back again") as server:
        server.models_status = 500  # background checks fail: it stays cooling until reset
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[[models]]\ntype = "openai"\nname = "loop"\nendpoint = "http://127.0.0.1:{server.port}/v1"\n'
            "[execution]\nmax_retries = 0\ncooldown = 600\n"
        )
        yield server, home


def oblix(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return commands.oblix(None, home, *args, OPENAI_API_KEY="sk-health-test", COLUMNS="250")


def health(home: Path) -> dict[str, object]:
    listed = oblix(home, "models", "--json")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)["models"]
    return dict(model["health"])


def test_a_cooling_endpoint_is_shown_and_reset(endpoint: tuple[LoopbackOpenAI, Path]) -> None:
    server, home = endpoint
    assert health(home)["status"] == "ready"
    failed = oblix(home, "run", "-m", "openai:loop", "hi")
    assert failed.returncode == 1 and "503" in failed.stderr
    shown = health(home)
    assert shown["status"] == "cooling" and not shown["available"]
    assert "503" in str(shown["reason"])
    table = oblix(home, "models")
    assert "cooling since" in table.stdout and "--reset-health" in table.stdout
    refused = oblix(home, "run", "-m", "openai:loop", "hi")
    assert refused.returncode == 1
    assert "oblix models --reset-health openai:loop" in " ".join(refused.stderr.split())
    server.mode = "ok"  # the endpoint is fixed
    reset = oblix(home, "models", "--reset-health", "loop")  # a bare name works too
    assert reset.returncode == 0 and "openai:loop: health reset" in reset.stderr
    assert health(home)["status"] == "ready"
    answered = oblix(home, "run", "-m", "openai:loop", "hi")
    assert answered.returncode == 0, answered.stderr
    assert "back again" in answered.stdout
    unknown = oblix(home, "models", "--reset-health", "nosuch")
    assert unknown.returncode == 1 and "--reset-health nosuch is not one of" in unknown.stderr
    every = oblix(home, "models", "--reset-health", "--json")  # without MODEL: every model
    assert every.returncode == 0 and "openai:loop: health reset" in every.stderr
    assert json.loads(every.stdout)["models"][0]["health"]["status"] == "ready"
