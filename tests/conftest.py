"""Shared fixtures. Async tests run under both asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.execution import ExecutionSettings
from oblix_core.testing import ScriptedPlugin

FAST = ExecutionSettings(backoff_initial=0.001, backoff_max=0.002, first_token_timeout=5, total_timeout=10)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty ``$OBLIX_HOME``."""
    path = tmp_path / "oblix-home"
    path.mkdir()
    monkeypatch.setenv("OBLIX_HOME", str(path))
    yield path


@pytest.fixture
def scripted() -> ScriptedPlugin:
    return ScriptedPlugin()


@pytest.fixture
async def client(home: Path, scripted: ScriptedPlugin) -> AsyncIterator[OblixClient]:
    """A client on the file store with the scripted (test double) backend registered."""
    oblix = OblixClient(home=home, plugins=[scripted], execution=FAST)
    yield oblix
    await oblix.shutdown()
