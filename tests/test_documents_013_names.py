"""Oblix 0.1.3's document names with 0.1.3's own argument names, sync/async kinds and result
keys (read from the 0.1.3 wheel's ``oblix/client/client.py`` and its document manager), on the
real parts: the packaged all-MiniLM GGUF in llama.cpp and the SQLite index on disk."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.documents.errors import DocumentNotFoundError

pytest.importorskip("oblix_docs")
pytestmark = pytest.mark.anyio

#: (method, 0.1.3's parameters after self, a coroutine in 0.1.3)
SIGNATURES_013 = [
    ("set_default_embedding_model", ["config"], False),
    ("configure_embedding_model", ["type_name", "model_name", "kwargs"], True),
    (
        "upload_document",
        ["file_path", "name", "workspace_id", "embed", "metadata", "embedding_model_type"],
        True,
    ),
    (
        "upload_directory",
        ["directory_path", "workspace_id", "embedding_model_type", "recursive", "metadata", "batch_size"],
        True,
    ),
    (
        "register_connector",
        [
            "connector_type",
            "path",
            "embedding_model",
            "embedding_api_key",
            "alias",
            "exclude_patterns",
            "kwargs",
        ],
        True,
    ),
    ("vector_search", ["query", "workspace_id", "embedding_model_type", "top_k"], True),
    ("create_workspace", ["name", "description", "metadata"], True),
    ("add_document_to_workspace", ["doc_id", "workspace_id"], True),
    ("embed_document", ["doc_id", "workspace_id"], True),
    ("list_workspaces", [], True),
    ("get_documents_in_workspace", ["workspace_id"], True),
    ("search_workspace", ["workspace_id", "query", "top_k"], True),
    ("update_workspace_embeddings", ["workspace_id", "embedding_config"], True),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "router.md").write_text("# Router\n\nHold the red button for 12 seconds to reset the router.\n")
    (root / "sub" / "cake.md").write_text("# Cake\n\nBake the lemon cake at 180 degrees.\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary\x00")
    return root


@pytest.mark.parametrize(
    ("method", "params", "is_coroutine"), SIGNATURES_013, ids=[s[0] for s in SIGNATURES_013]
)
async def test_each_name_takes_013s_arguments_and_is_as_async_as_it_was(
    method: str, params: list[str], is_coroutine: bool
) -> None:
    function = getattr(OblixClient, method)
    ours = list(inspect.signature(function).parameters)[1:]
    assert ours[: len(params) - ("kwargs" in params)] == [p for p in params if p != "kwargs"]
    assert inspect.iscoroutinefunction(function) is is_coroutine


async def test_a_013_script_gets_013s_result_keys(notes: Path, tmp_path: Path) -> None:
    client = OblixClient(home=tmp_path / "home")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a coroutine never awaited would warn: it must not be one
            config = await client.configure_embedding_model("local", "all-minilm-l6-v2")
            assert client.set_default_embedding_model(config) is None

        connector = await client.register_connector("directory", str(notes), alias="notes")
        assert {"connector_id", "workspace_id", "success", "alias", "type", "path", "stats", "error"} <= set(
            connector
        )
        assert (
            connector["type"] == "directory" and connector["success"] is True and connector["error"] is None
        )
        assert connector["stats"]["total_files"] == 3 and connector["stats"]["processed_files"] == 2

        workspace = await client.create_workspace("manuals", "router manuals", {"team": "ops"})
        assert isinstance(workspace, str)
        simple = await client.upload_document(str(notes / "router.md"))
        assert isinstance(simple, str)  # 0.1.3: the id of a simple upload
        full = await client.upload_document(str(notes / "router.md"), workspace_id=workspace, embed=True)
        assert isinstance(full, dict)
        assert {
            "doc_id",
            "success",
            "upload_success",
            "workspace_success",
            "embedding_success",
            "error",
        } <= set(full)
        assert full["success"] and full["embedding_success"] is True and full["error"] is None

        directory = await client.upload_directory(str(notes), workspace_id=workspace)
        assert {"workspace_id", "success", "total_files", "processed_files", "documents", "error"} <= set(
            directory
        )
        assert (directory["total_files"], directory["processed_files"]) == (3, 2)
        failed = [d for d in directory["documents"] if not d["success"]]
        assert [Path(d["file_path"]).name for d in failed] == ["blob.bin"] and failed[0]["error"]

        listed = {w["id"]: w for w in await client.list_workspaces()}
        assert listed[workspace]["name"] == "manuals" and listed[workspace]["document_count"] == 2
        documents = await client.get_documents_in_workspace(workspace)
        assert {"id", "name", "chunk_count", "embedding_status"} <= set(documents[0])
        assert {d["embedding_status"] for d in documents} == {"complete"}

        hits = await client.search_workspace(workspace, "reset the router", top_k=3)
        assert {"id", "score", "text", "doc_id", "doc_name", "chunk_idx"} <= set(hits[0])
        assert hits[0]["doc_name"] == "router.md"
        near = await client.vector_search("how do I restart my router", workspace, top_k=2)
        assert near[0]["doc_name"] == "router.md" and {"id", "score", "text", "chunk_idx"} <= set(near[0])
        assert await client.update_workspace_embeddings(workspace) is True
    finally:
        await client.shutdown()


async def test_documents_uploaded_without_embedding_are_embedded_and_copied_by_doc_id(
    notes: Path, tmp_path: Path
) -> None:
    client = OblixClient(home=tmp_path / "home")
    try:
        source = await client.create_workspace("inbox")
        target = await client.create_workspace("archive")
        uploaded = await client.upload_document(str(notes / "router.md"), workspace_id=source, embed=False)
        assert isinstance(uploaded, dict) and uploaded["embedding_success"] is None
        (before,) = await client.get_documents_in_workspace(source)
        assert before["embedding_status"] == "pending"
        assert await client.embed_document(doc_id=uploaded["doc_id"], workspace_id=source) is True
        (after,) = await client.get_documents_in_workspace(source)
        assert after["embedding_status"] == "complete"
        assert await client.add_document_to_workspace(doc_id=uploaded["doc_id"], workspace_id=target) is True
        assert [d["name"] for d in await client.get_documents_in_workspace(target)] == ["router.md"]
        assert (await client.vector_search("restart the router", target))[0]["doc_name"] == "router.md"
        assert await client.delete_document(doc_id=uploaded["doc_id"], workspace_id=source) is True
        assert await client.get_documents_in_workspace(source) == []
        with pytest.raises(DocumentNotFoundError):
            await client.embed_document("doc_missing", source)
    finally:
        await client.shutdown()
