"""Shared fixtures; the tiers and the async backends come from :mod:`tests.support.tiers`.

A plain ``pytest`` runs the fast tier; ``./scripts/test`` runs every tier (docs/testing.md).
Async tests run under asyncio, and under trio too where they test the core's anyio promises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oblix_core.client import OblixClient
from oblix_core.request.execution import ExecutionSettings
from oblix_core.testing import ScriptedPlugin
from tests.support.tiers import (  # noqa: F401 - hooks, registered by being in this module
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_report_header,
    pytest_runtest_protocol,
)

FAST = ExecutionSettings(backoff_initial=0.001, backoff_max=0.002, first_token_timeout=5, total_timeout=10)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio; the tests of the core's anyio promises are parametrized over trio too (tiers.py)."""
    return "asyncio"


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
async def make_client() -> AsyncIterator[Callable[..., OblixClient]]:
    """A factory of clients (``OblixClient(**kwargs)``), each shut down when the test ends."""
    made: list[OblixClient] = []

    def make(**kwargs: Any) -> OblixClient:
        made.append(OblixClient(**kwargs))
        return made[-1]

    yield make
    for oblix in made:
        await oblix.shutdown()


@pytest.fixture
async def client(
    home: Path, scripted: ScriptedPlugin, make_client: Callable[..., OblixClient]
) -> OblixClient:
    """A client on the file store with the scripted (test double) backend registered."""
    return make_client(home=home, plugins=[scripted], execution=FAST)
