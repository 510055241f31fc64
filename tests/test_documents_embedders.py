"""The remote embedders on the embedder contract: ``openai`` against llama-cpp-python's real
OpenAI-compatible server running the packaged all-MiniLM GGUF (``/v1/embeddings``), and
``ollama`` against the protocol-faithful Ollama test double (no Ollama binary can be installed
here) whose ``/api/embed`` answers with the real local embedder's vectors."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix.testing import EmbedderContract
from oblix_core.client import OblixClient
from oblix_core.documents.errors import EmbedderError
from tests.ollama_double import OllamaDouble
from tests.support.net import free_port, wait_for_http

pytest.importorskip("oblix_docs")
from oblix_docs.embedder import MODEL_FILE, LocalEmbedder
from oblix_ollama.embeddings import OllamaEmbedder
from oblix_openai.embeddings import OpenAIEmbedder

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _embedding_server() -> Iterator[str]:
    """``python -m llama_cpp.server --embedding``: a real /v1/embeddings on loopback, killed on exit."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(MODEL_FILE),
            "--embedding",
            "True",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
            "--n_threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", process=process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def embedding_server() -> Iterator[str]:
    with _embedding_server() as url:
        yield url


class TestOpenAICompatibleEmbedder(EmbedderContract):
    @pytest.fixture
    def embedder(self, embedding_server: str) -> OpenAIEmbedder:
        return OpenAIEmbedder("all-minilm", endpoint=embedding_server)


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaDouble]:
    real = LocalEmbedder()
    with OllamaDouble({"all-minilm:latest": 512}) as double:
        double.embed = real.embed  # type: ignore[attr-defined]
        yield double
    real.close()


class TestOllamaEmbedder(EmbedderContract):
    @pytest.fixture
    def embedder(self, ollama: OllamaDouble) -> OllamaEmbedder:
        return OllamaEmbedder("all-minilm", endpoint=ollama.url)


def test_a_loopback_endpoint_is_local_and_a_remote_one_is_not(embedding_server: str) -> None:
    assert OpenAIEmbedder("m", endpoint=embedding_server).is_local is True
    assert (
        OpenAIEmbedder("m", endpoint="https://api.example.com/v1", api_key="sk-test-1234").is_local is False
    )
    assert OllamaEmbedder("m", endpoint="http://10.1.2.3:11434").is_local is False


def test_an_embedder_that_is_down_fails_with_its_error_and_no_key(tmp_path: Path) -> None:
    port = free_port()
    embedder = OpenAIEmbedder(
        "m",
        endpoint=f"http://127.0.0.1:{port}/v1",
        api_key="sk-secret-abcdef123456",
        max_retries=0,
        timeout=5,
    )
    with pytest.raises(EmbedderError) as caught:
        embedder.embed(["hello"])
    assert "sk-secret-abcdef123456" not in str(caught.value) and "Connection" in str(caught.value)


@pytest.mark.anyio
async def test_a_workspace_embedded_through_the_server(embedding_server: str, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "router.md").write_text(
        "# Router\n\nHold the red button for 12 seconds to reset.\n"
    )
    async with OblixClient(home=tmp_path / "home") as client:
        config = await client.configure_embedding_model("openai", "all-minilm", endpoint=embedding_server)
        result = await client.register_connector(
            "directory", str(tmp_path / "notes"), embedding_model=config["name"]
        )
        (workspace,) = await client.list_workspaces()
        assert workspace["embedder"].startswith("openai:all-minilm@") and workspace["dimension"] == 384
        hits = await client.vector_search("how to reset", result["workspace_id"], top_k=1)
        assert hits[0]["doc_name"] == "router.md"


@pytest.mark.anyio
async def test_a_workspace_whose_embedder_is_down_is_searched_by_its_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request drawing on a workspace whose embedding server went away still answers from
    its documents, found by keywords (it failed the request before)."""
    from oblix_core.testing import ScriptedPlugin

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "router.md").write_text(
        "# Router\n\nHold the red button for 12 seconds to reset.\n"
    )
    plugin = ScriptedPlugin()
    async with OblixClient(home=tmp_path / "home", plugins=[plugin]) as client:
        await client.hook_model("scripted", "laptop", local=True)
        with _embedding_server() as url:
            config = await client.configure_embedding_model(
                "openai", "all-minilm", endpoint=url, max_retries=0
            )
            result = await client.register_connector(
                "directory", str(tmp_path / "notes"), embedding_model=config["name"]
            )
        with caplog.at_level(logging.WARNING, logger="oblix_core.documents.retrieval"):
            answer = await client.execute("reset the router with the red button", stream=False)
        assert [s["document"] for s in answer["sources"]] == ["router.md"]
        assert "red button" in plugin.calls["laptop"][-1].messages[0].content
        assert "searched by keywords only" in caplog.text
        with pytest.raises(EmbedderError):  # asked for by meaning alone, the failure is the answer
            await client.vector_search("how to reset", result["workspace_id"])


@pytest.mark.anyio
async def test_workspaces_searched_differently_are_fused_by_rank_not_score(tmp_path: Path) -> None:
    """A request over a workspace searched by words only (its embedding server is gone: BM25
    scores of 1 and more) and one searched by words and meaning (fused scores under 0.04)
    takes the best of each, not five of the first because its scale is larger."""
    from oblix_core.testing import ScriptedPlugin

    for name in ("remote", "mine"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            (folder / f"{name}{i}.md").write_text(f"# Note {i}\n\nThe router note {i} of {name}: reset it.\n")
    async with OblixClient(home=tmp_path / "home", plugins=[ScriptedPlugin()]) as client:
        await client.hook_model("scripted", "laptop", local=True)
        with _embedding_server() as url:
            config = await client.configure_embedding_model(
                "openai", "all-minilm", endpoint=url, max_retries=0
            )
            remote = await client.register_connector(
                "directory", str(tmp_path / "remote"), embedding_model=config["name"], alias="remote"
            )
        mine = await client.register_connector("directory", str(tmp_path / "mine"), alias="mine")
        answer = await client.execute(
            "reset the router", workspace_id=[remote["workspace_id"], mine["workspace_id"]], stream=False
        )
        found = [s["workspace"] for s in answer["sources"]]
        assert len(found) == 5 and set(found[:2]) == {"remote", "mine"}
