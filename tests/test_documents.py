"""Documents: chunking, walking, sync, privacy and 0.1.3's names, on the real parts (the packaged
all-MiniLM GGUF in llama.cpp, the SQLite index on disk, real files and a real kill -9)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from oblix_core.client import OblixClient
from oblix_core.documents.chunking import chunk_blocks, count_tokens
from oblix_core.documents.errors import DocumentError, EmbedderError, EmbedderMismatchError
from oblix_core.documents.parts import Embedder
from oblix_core.documents.ranking import reciprocal_rank_fusion
from oblix_core.documents.records import Chunk, SearchHit, TextBlock
from oblix_core.documents.walking import Skipped, walk
from oblix_core.testing import ScriptedPlugin

pytest.importorskip("oblix_docs")
pytestmark = pytest.mark.anyio

ROUTER = (
    "# Router manual\n\n## Resetting\n\nTo reset the Zephyr-9 router, hold the red button for 12 seconds.\n"
)
CAKE = "# Baking\n\nBake the lemon cake at 180 degrees for forty minutes.\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "router.md").write_text(ROUTER)
    (root / "cake.md").write_text(CAKE)
    (root / "sub" / "tool.py").write_text("def launch_rocket(speed):\n    return speed * 2\n")
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# -- chunking ---------------------------------------------------------------------------------


def test_chunks_keep_heading_path_and_lines_within_the_budget() -> None:
    blocks = [
        TextBlock(
            f"Sentence number {i} says something about turbines.", i * 2 + 3, None, ("Guide", "Turbines")
        )
        for i in range(40)
    ]
    chunks = chunk_blocks("d", blocks, budget=60, overlap=12)
    assert len(chunks) > 3
    assert all(count_tokens(c.text) <= 60 for c in chunks)
    assert all(c.headings == ("Guide", "Turbines") for c in chunks)
    assert chunks[0].line_start == 3 and chunks[1].line_start > chunks[0].line_start
    assert [c.chunk_idx for c in chunks] == list(range(len(chunks)))


def test_each_chunk_starts_with_the_end_of_the_one_before_in_the_same_section() -> None:
    blocks = [TextBlock(f"Fact {i} is here.", i + 1, None, ("A",)) for i in range(30)]
    chunks = chunk_blocks("d", blocks, budget=40, overlap=10)
    for before, after in itertools.pairwise(chunks):
        assert before.text.split("\n\n")[-1] in after.text


def test_a_new_section_starts_a_new_chunk_without_overlap() -> None:
    chunks = chunk_blocks("d", [TextBlock("One.", 1, None, ("A",)), TextBlock("Two.", 3, None, ("B",))])
    assert [(c.text, c.headings) for c in chunks] == [("One.", ("A",)), ("Two.", ("B",))]


def test_a_block_larger_than_the_budget_is_split_on_sentences() -> None:
    text = " ".join(f"Statement {i} ends here." for i in range(100))
    chunks = chunk_blocks("d", [TextBlock(text, 1)], budget=50, overlap=0)
    assert len(chunks) > 5 and all(count_tokens(c.text) <= 50 for c in chunks)
    assert "".join(c.text.replace(" ", "") for c in chunks) == text.replace(" ", "")


def test_reciprocal_rank_fusion_prefers_what_both_lists_found() -> None:
    def hit(name: str) -> SearchHit:
        return SearchHit(Chunk(name, 0, name), 1.0)

    fused = reciprocal_rank_fusion([[hit("a"), hit("b"), hit("c")], [hit("c"), hit("d"), hit("b")]], 3)
    assert [h.chunk.doc_id for h in fused][:2] == ["c", "b"]


# -- walking ----------------------------------------------------------------------------------


def test_walk_honours_gitignore_and_exclude_patterns(notes: Path) -> None:
    (notes / ".gitignore").write_text("*.log\n")
    (notes / "sub" / ".gitignore").write_text("secret.txt\n")
    (notes / "debug.log").write_text("x")
    (notes / "sub" / "secret.txt").write_text("x")
    (notes / "draft.md").write_text("x")
    (notes / ".git").mkdir()
    (notes / ".git" / "config").write_text("x")
    found = [f[1] for f in walk(notes, ["draft.*"]) if not isinstance(f, Skipped)]
    assert found == ["cake.md", "router.md", "sub/tool.py"]


def test_walk_refuses_links_outside_the_root_and_walks_a_loop_once(notes: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.md").write_text("private")
    (notes / "leak.md").symlink_to(tmp_path / "outside.md")
    (notes / "sub" / "loop").symlink_to(notes)
    results = list(walk(notes))
    files = [f[1] for f in results if not isinstance(f, Skipped)]
    skipped = {s.path: s.reason for s in results if isinstance(s, Skipped)}
    assert "leak.md" not in files and "outside the registered root" in skipped["leak.md"]
    assert "symlink loop" in skipped["sub/loop"]
    assert files == ["cake.md", "router.md", "sub/tool.py"]


# -- sync -------------------------------------------------------------------------------------


class CountingEmbedder(Embedder):
    """Wraps the real local embedder and counts the texts it embeds (an observer, not a double)."""

    def __init__(self, real: Embedder) -> None:
        self.real, self.name, self.dimension, self.is_local = real, real.name, real.dimension, real.is_local
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str], *, query: bool = False) -> Sequence[Sequence[float]]:
        if not query:
            self.texts.extend(texts)
        return self.real.embed(texts, query=query)


async def test_sync_embeds_only_what_changed_and_drops_deleted_files(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        first = await client.register_connector("directory", str(notes))
        assert first["success"] and first["stats"]["added"] == 3 and first["stats"]["documents"] == 3
        library = client._documents()
        counting = CountingEmbedder(library.embedder(None))
        library._embedders[""] = counting
        library._embedders[first and library.workspace(first["workspace_id"]).embedder] = counting
        (notes / "cake.md").write_text(CAKE + "\nServe it cold.\n")
        (notes / "sub" / "tool.py").unlink()
        (report,) = await client.sync_connectors()
        assert (report["updated"], report["unchanged"], report["deleted"]) == (1, 1, 1)
        assert counting.texts and all("cake" in t.lower() or "serve" in t.lower() for t in counting.texts)
        names = [d["name"] for d in await client.get_documents_in_workspace(first["workspace_id"])]
        assert names == ["cake.md", "router.md"]


async def test_search_finds_by_meaning_and_by_words(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(notes)))["workspace_id"]
        meaning = await client.vector_search("how long should the dessert stay in the oven", ws, top_k=1)
        assert meaning[0]["doc_name"] == "cake.md"
        words = await client.search_workspace(ws, "Zephyr-9 red button", top_k=2)
        assert words[0]["doc_name"] == "router.md"
        assert set(words[0]) >= {"id", "score", "text", "doc_id", "doc_name", "chunk_idx"}
        assert words[0]["location"] == "line 5 (Router manual > Resetting)"
        with pytest.raises(DocumentError, match="empty"):
            await client.search_workspace(ws, "   ")


KILLED_SYNC = textwrap.dedent(
    """
    import os, signal, sys, anyio
    from oblix_core.client import OblixClient

    async def main():
        done = []
        def progress(event, path, chunks):
            if event == "embedded":
                done.append(path)
                if len(done) == int(sys.argv[3]):
                    os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 in the middle of the ingest
        async with OblixClient(home=sys.argv[1]) as client:
            await client.register_connector("directory", sys.argv[2], alias="corpus", progress=progress)

    anyio.run(main)
    """
)


def _index_state(home: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    db = sqlite3.connect(home / "documents" / "index.sqlite3")
    docs = db.execute(
        "SELECT d.name, json_extract(d.body, '$.content_hash') FROM documents d ORDER BY name"
    ).fetchall()
    chunks = db.execute(
        "SELECT d.name, c.chunk_idx, c.text, length(c.vector) FROM chunks c JOIN documents d "
        "ON d.id = c.doc_id ORDER BY d.name, c.chunk_idx"
    ).fetchall()
    (orphans,) = db.execute(
        "SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)"
    ).fetchone()
    (fts,) = db.execute("SELECT count(*) FROM chunk_terms").fetchone()  # keyword entries, one a chunk
    db.close()
    assert orphans == 0 and fts == len(chunks)
    return [*docs, *chunks]


async def test_a_killed_ingest_run_again_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i}.md").write_text(f"# Part {i}\n\n" + f"Paragraph {i} about topic {i}. " * 6)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SYNC, str(tmp_path / "killed"), str(corpus), "4"], capture_output=True
    )
    assert killed.returncode == -9
    async with OblixClient(home=tmp_path / "killed") as client:  # the connector was stored before the sync
        (report,) = await client.sync_connectors()
        assert report["unchanged"] == 4 and report["added"] == 4
    async with OblixClient(home=tmp_path / "whole") as client:
        await client.register_connector("directory", str(corpus), alias="corpus")
    assert _index_state(tmp_path / "killed") == _index_state(tmp_path / "whole")


# -- bad input --------------------------------------------------------------------------------


async def test_unreadable_files_are_skipped_and_reported_and_other_encodings_read(
    notes: Path, home: Path
) -> None:
    (notes / "blob.bin").write_bytes(b"\x00\x01binary\x00" * 10)
    (notes / "latin.txt").write_bytes("Le café est fermé à midi, déjà.".encode("latin-1"))
    (notes / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes))
        skipped = {s["path"] for s in result["stats"]["skipped"]}
        assert skipped == {"blob.bin", "broken.pdf"} and result["stats"]["added"] == 4
        hits = await client.search_workspace(result["workspace_id"], "café fermé", top_k=1)
        assert hits[0]["doc_name"] == "latin.txt" and "déjà" in hits[0]["text"]


class DownEmbedder(Embedder):
    """A test double: an embedder whose service is down from its second batch (nothing real fails on cue)."""

    name, dimension, is_local = "local:all-minilm-l6-v2", 384, True

    def __init__(self, real: Embedder) -> None:
        self.real, self.calls = real, 0

    def embed(self, texts: Sequence[str], *, query: bool = False) -> Sequence[Sequence[float]]:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("connection refused")
        return self.real.embed(texts, query=query)


async def test_an_embedder_that_fails_writes_no_chunk_of_that_document(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(notes)))["workspace_id"]
        library = client._documents()
        workspace = library.workspace(ws)
        cake = next(d for d in library.index.list_documents(ws) if d.name == "cake.md")
        before = library.index.document_chunks(ws, cake.id)
        library._embedders["local:all-minilm-l6-v2"] = DownEmbedder(library.embedder(None))
        (notes / "cake.md").write_text("# Baking\n\n" + "A much longer cake text. " * 60)
        with pytest.raises(EmbedderError, match="connection refused"):
            library.sync(workspace, workspace.connectors[0], batch_size=1)  # fails on its second batch
        assert library.index.document_chunks(ws, cake.id) == before
        assert library.index.get_document(ws, cake.id) == cake


async def test_mixing_embedders_in_a_workspace_is_refused(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        ws = await client.create_workspace("mine")
        library = client._documents()
        other = CountingEmbedder(library.embedder(None))
        other.name = "other:model"
        library._embedders["other"] = other
        with pytest.raises(EmbedderMismatchError, match="update_workspace_embeddings"):
            await client.upload_document(
                str(notes / "cake.md"), workspace_id=ws, embed=True, embedding_model_type="other"
            )


async def test_documents_without_the_docs_extra_say_what_to_install(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "docs")
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentError, match=r"pip install 'oblix\[docs\]'"):
            await client.create_workspace("x")


# -- requests ---------------------------------------------------------------------------------


async def test_a_013_script_registers_a_directory_and_answers_with_sources(notes: Path, home: Path) -> None:
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("scripted", "local-model", local=True)
        connector = await client.register_connector("directory", str(notes), alias="my-notes")
        assert {"connector_id", "workspace_id", "success", "alias", "stats"} <= set(connector)
        result = await client.execute("How do I reset the Zephyr-9 router?", stream=False)
        sent = plugin.calls["local-model"][-1].messages
        assert "Document Context" in sent[0].content and "red button" in sent[0].content
        assert result["sources"][0]["document"] == "router.md" and result["sources"][0]["n"] == 1
        session = await client.aload_session(result["session_id"])
        stored = session["messages"][-1]
        assert stored["metrics"]["sources"] == result["sources"]
        assert session["messages"][-2]["content"] == "How do I reset the Zephyr-9 router?"


async def test_a_private_workspace_keeps_the_request_off_cloud_models(notes: Path, home: Path) -> None:
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin], preference="cloud-first") as client:
        await client.hook_model("scripted", "cloud", local=False)
        await client.hook_model("scripted", "laptop", local=True)
        ws = await client.create_workspace("diary", private=True)
        await client.upload_document(str(notes / "router.md"), workspace_id=ws, embed=True)
        result = await client.execute("reset the router?", workspace_id=ws, stream=False)
        assert result["model_id"] == "scripted:laptop" and not plugin.calls["cloud"]
        assert "private document workspace 'diary'" in result["routing_decision"]["local_only"]["reason"]
        plain = await client.execute("hello", stream=False)  # no workspace: cloud-first as usual
        assert plain["model_id"] == "scripted:cloud" and "sources" not in plain


async def test_a_private_workspace_refuses_a_cloud_embedder(home: Path) -> None:
    async with OblixClient(home=home) as client:
        library = client._documents()
        cloud = CountingEmbedder(library.embedder(None))
        cloud.name, cloud.is_local = "cloud:model", False
        library._embedders["cloud"] = cloud
        with pytest.raises(DocumentError, match="local embedder"):
            await client.create_workspace("secret", private=True, embedding_model="cloud")


async def test_deleting_documents_workspaces_and_connectors(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        connector = await client.register_connector("directory", str(notes))
        ws = connector["workspace_id"]
        doc = (await client.get_documents_in_workspace(ws))[0]
        assert await client.delete_document(doc["id"]) is True
        assert len(await client.get_documents_in_workspace(ws)) == 2
        assert await client.delete_connector(connector["connector_id"]) is True
        assert await client.get_documents_in_workspace(ws) == []
        assert await client.delete_workspace(ws) is True
        assert await client.list_workspaces() == []
        assert os.listdir(notes)  # the files are untouched


async def test_adding_the_same_folder_again_keeps_one_connector_and_no_duplicate(
    notes: Path, home: Path
) -> None:
    async with OblixClient(home=home) as client:
        first = await client.register_connector("directory", str(notes), alias="notes")
        again = await client.register_connector(
            "directory", str(notes), workspace_id=first["workspace_id"], exclude_patterns=["*.py"]
        )
        assert again["connector_id"] == first["connector_id"]
        assert (again["stats"]["unchanged"], again["stats"]["deleted"]) == (2, 1)
        assert len(await client.list_connectors()) == 1
        assert [d["name"] for d in await client.get_documents_in_workspace(first["workspace_id"])] == [
            "cake.md",
            "router.md",
        ]


class QueryCountingEmbedder(CountingEmbedder):
    """The real local embedder posing as a cloud one (``is_local=False``) that counts the queries
    it is asked to embed: an observer of what would leave the machine."""

    def __init__(self, real: Embedder) -> None:
        super().__init__(real)
        self.name, self.is_local, self.queries = "cloud:observed", False, 0

    def embed(self, texts: Sequence[str], *, query: bool = False) -> Sequence[Sequence[float]]:
        self.queries += query
        return super().embed(texts, query=query)


async def test_a_local_only_request_never_embeds_its_query_with_a_cloud_embedder(
    notes: Path, home: Path
) -> None:
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("scripted", "laptop", local=True)
        library = client._documents()
        cloud = QueryCountingEmbedder(library.embedder(None))
        library._embedders["cloud"] = library._embedders[cloud.name] = cloud
        ws = await client.create_workspace("shared", embedding_model="cloud")
        await client.upload_document(str(notes / "router.md"), workspace_id=ws, embed=True)
        assert (await client.execute("reset the router?", workspace_id=ws, stream=False))["sources"]
        assert cloud.queries == 1  # an ordinary request: the query is embedded (and may leave)
        private = await client.execute(
            "reset the Zephyr-9 router?", workspace_id=ws, local_only=True, stream=False
        )
        assert private["sources"][0]["document"] == "router.md"  # found by its words
        sid = private["session_id"]  # a local-only session: its later requests stay keyword-only too
        await client.execute("and the red button?", workspace_id=ws, session_id=sid, stream=False)
        assert cloud.queries == 1
        with pytest.raises(DocumentError, match="not private"):
            await client.register_connector("directory", str(notes), workspace_id=ws, private=True)


async def test_a_local_only_sessions_connectors_are_private(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        await client.create_and_use_session(title="secret", metadata={"local_only": True})
        result = await client.register_connector("directory", str(notes), alias="diary-notes")
        (workspace,) = await client.list_workspaces()
        assert workspace["id"] == result["workspace_id"] and workspace["private"] is True
        assert workspace["connectors"][0]["private"] is True
