"""``[documents]`` in ``config.toml``: the document index, its options (a DSN read from the
environment, never shown) and the default embedder, checked once like every table, and used by
every client built from the config. The end-to-end runs against a real Postgres with pgvector are
in ``test_pgvector_config.py`` (slow tier); these use the real SQLite index and local embedder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.config.settings import load_config
from oblix_core.documents.errors import DocumentError, DocumentsNotInstalledError
from oblix_core.documents.settings import PGVECTOR_DSN_ENV, DocumentsSettings, index_arguments
from oblix_core.errors import ConfigError
from tests.support import commands

pytest.importorskip("oblix_docs")

#: A DSN with a password, to a port where nothing listens (connection refused at once).
UNREACHABLE = "postgresql://oblix:s3cret-pass@127.0.0.1:1/oblix"


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


# -- parsing and validation --------------------------------------------------------------------


def test_without_the_table_the_sqlite_index_and_the_local_embedder(tmp_path: Path) -> None:
    assert load_config(tmp_path).documents == DocumentsSettings(index="sqlite", embedder="local", options={})


def test_the_table_is_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[documents]\nindex = "pgvector"\nembedder = "openai:text-embedding-3-small"\n'
        'options = { dsn_env = "MY_DSN", prefix = "team_", timeout = 5 }\n',
    )
    documents = load_config(tmp_path).documents
    assert documents.index == "pgvector" and documents.embedder == "openai:text-embedding-3-small"
    assert documents.options == {"dsn_env": "MY_DSN", "prefix": "team_", "timeout": 5}


BAD = [
    (
        '[documents]\nindx = "pgvector"\n',
        "[documents] has an unknown key 'indx' (known keys: index, embedder",
    ),
    ("[documents]\nindex = 3\n", "[documents] index must be a document index (sqlite, pgvector...), got 3"),
    ('[documents]\nindex = " "\n', "[documents] index must be a document index"),
    ("[documents]\nembedder = false\n", '[documents] embedder must be an embedder, e.g. "local"'),
    ('[documents]\noptions = "x"\n', "[documents] options must be a table of the index's options, got 'x'"),
    (
        "[documents]\noptions = { dsn_env = 3 }\n",
        "[documents] options.dsn_env must be the name of an environment variable, got 3",
    ),
    (
        '[documents]\noptions = { dsn = "postgresql://h/db", dsn_env = "X" }\n',
        "[documents] options.dsn_env must be left out when options.dsn is given",
    ),
    ('documents = "pgvector"\n', "documents must be a table, written [documents]"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_each_mistake_names_the_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_password_written_in_the_file_is_in_no_repr_nor_error(tmp_path: Path) -> None:
    write(
        tmp_path, f'[documents]\nindex = "pgvector"\noptions = {{ dsn = "{UNREACHABLE}", prefix = "p_" }}\n'
    )
    config = load_config(tmp_path)
    assert config.documents.options["dsn"] == UNREACHABLE  # what the index gets
    assert "s3cret-pass" not in repr(config) and "prefix': 'p_'" in repr(config)
    write(tmp_path, f'[documents]\noptions = "{UNREACHABLE}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert "s3cret-pass" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_env_options_are_read_when_the_index_is_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DocumentsSettings(index="pgvector", options={"dsn_env": "TEAM_DSN", "prefix": "t_"})
    monkeypatch.delenv("TEAM_DSN", raising=False)
    with pytest.raises(ConfigError, match="environment variable TEAM_DSN, which is not set") as caught:
        index_arguments(settings, "/x/config.toml")
    assert str(caught.value).startswith("/x/config.toml: [documents] index 'pgvector' reads its dsn")
    monkeypatch.setenv("TEAM_DSN", UNREACHABLE)
    assert index_arguments(settings) == {"dsn": UNREACHABLE, "prefix": "t_"}


def test_pgvector_reads_its_default_variable_when_no_dsn_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PGVECTOR_DSN_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"variable {PGVECTOR_DSN_ENV}, which is not set"):
        index_arguments(DocumentsSettings(index="pgvector"))
    monkeypatch.setenv(PGVECTOR_DSN_ENV, UNREACHABLE)
    assert index_arguments(DocumentsSettings(index="pgvector")) == {"dsn": UNREACHABLE}
    literal = DocumentsSettings(index="pgvector", options={"dsn": "postgresql://h/db"})
    assert index_arguments(literal) == {"dsn": "postgresql://h/db"}
    assert index_arguments(DocumentsSettings()) == {}  # sqlite: its file in the home


# -- clients built from the config ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_client_opens_the_configured_index_and_names_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write(home, '[documents]\nindex = "pgvector"\noptions = { dsn_env = "TEAM_DSN", timeout = 2 }\n')
    monkeypatch.setenv("TEAM_DSN", UNREACHABLE)
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentError, match="Cannot connect to Postgres") as caught:
            await client.list_workspaces()
        assert "s3cret-pass" not in str(caught.value)
        client.use_document_index("sqlite")  # overrides the config for this client
        assert await client.create_workspace("notes")
    assert (home / "documents" / "index.sqlite3").exists()


@pytest.mark.anyio
async def test_a_configured_embedder_is_the_default_of_new_workspaces(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home, '[documents]\nembedder = "nosuch"\n')
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentsNotInstalledError, match="No embedder 'nosuch'"):
            await client.create_workspace("notes")
        client.set_default_embedding_model("local")  # the client's choice wins
        await client.create_workspace("notes")
        (workspace,) = await client.list_workspaces()
        assert workspace["embedder"].startswith("local:")
    write(home, '[documents]\nembedder = "local"\n')
    async with OblixClient(home=home) as client:
        name, vectors = await client.embed_texts(["reset the router"])
        assert name.startswith("local:") and len(vectors[0]) == 384


@pytest.mark.anyio
async def test_an_unregistered_index_says_what_to_install(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home, '[documents]\nindex = "chroma"\n')
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentsNotInstalledError, match=r"pip install 'oblix\[chroma\]'"):
            await client.list_workspaces()


def test_pgvector_without_its_extra_names_the_extra_before_asking_for_a_dsn(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home, '[documents]\nindex = "pgvector"\n')
    code = (
        "import sys; sys.modules['psycopg'] = None\n"  # as if oblix[pgvector] were not installed
        "from oblix_core.cli.main import main\n"
        "sys.argv = ['oblix', 'docs', 'list']\n"
        "main()\n"
    )
    env = commands.environ(None, home)
    env.pop(PGVECTOR_DSN_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pip install 'oblix[pgvector]'" in out.stderr and PGVECTOR_DSN_ENV not in out.stderr


def test_oblix_docs_uses_the_configured_index(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        home,
        f'[documents]\nindex = "pgvector"\noptions = {{ dsn_env = "{PGVECTOR_DSN_ENV}", timeout = 2 }}\n',
    )
    monkeypatch.delenv(PGVECTOR_DSN_ENV, raising=False)
    unset = commands.invoke("docs", "list")
    assert unset.exit_code == 1 and f"{PGVECTOR_DSN_ENV}, which is not set" in unset.output
    monkeypatch.setenv(PGVECTOR_DSN_ENV, UNREACHABLE)
    refused = commands.invoke("docs", "search", "reset", "-w", "notes")
    assert refused.exit_code == 1 and "Cannot connect to Postgres" in refused.output
    assert "s3cret-pass" not in refused.output and "oblix:***@127.0.0.1:1" in refused.output
    assert not (home / "documents").exists()  # no SQLite index made on the side


@pytest.mark.anyio
async def test_a_new_default_embedder_applies_to_workspaces_created_after_it(tmp_path: Path) -> None:
    """The default changes after the index was opened: the next workspace asks the new embedder
    (here an OpenAI-compatible endpoint where nothing listens), not the one the library kept."""
    from oblix_core.documents.errors import EmbedderError

    async with OblixClient(home=tmp_path / "home") as client:
        await client.create_workspace("first")  # opens the index with the configured default
        client.set_default_embedding_model("openai:text-embedding-3-small@http://127.0.0.1:1/v1")
        with pytest.raises(EmbedderError, match=r"openai:text-embedding-3-small@http://127\.0\.0\.1:1/v1"):
            await client.create_workspace("second")
        assert [w["name"] for w in await client.list_workspaces()] == ["first"]


@pytest.mark.anyio
async def test_a_cloud_default_embedder_never_embeds_a_private_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    home = tmp_path / "home"
    write(home, '[documents]\nembedder = "openai:text-embedding-3-small"\n')
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentError, match="needs a key"):  # the cloud default is used...
            await client.create_workspace("shared")
        diary = await client.create_workspace("diary", private=True)  # ...but not for a private one
        notes = tmp_path / "router.md"
        notes.write_text("# Router\n\nReset: hold the red button.\n")
        await client.upload_document(str(notes), workspace_id=diary, embed=True)
        (listed,) = await client.list_workspaces()
        assert listed["private"] and listed["embedder"].startswith("local:")
        hits = await client.search_workspace(diary, "how to reset", mode="vector")
        assert hits[0]["doc_name"] == "router.md"
