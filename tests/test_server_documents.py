"""``oblix server`` and documents, with the official ``openai`` client: ``POST /v1/embeddings`` from
the real local embedder, and chat completions drawing on a workspace (``extra_body``), where a
private workspace keeps the answer on the local model (the models are the server tests' doubles)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import anyio
import openai
import pytest

from oblix_core.client import OblixClient
from tests.server_process import OblixServer, model_toml, write_plugin_dist

pytest.importorskip("oblix_docs")
pytestmark = pytest.mark.slow


def _setup(home: Path, notes: Path) -> None:
    async def main() -> None:
        async with OblixClient(home=home) as client:
            diary = await client.create_workspace("diary", private=True)
            await client.upload_document(str(notes / "router.md"), workspace_id=diary, embed=True)
            shared = await client.create_workspace("shared")
            await client.upload_document(str(notes / "router.md"), workspace_id=shared, embed=True)

    anyio.run(main)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OblixServer]:
    notes = tmp_path_factory.mktemp("notes")
    (notes / "router.md").write_text("# Router\n\n## Reset\n\nHold the red button for 12 seconds.\n")
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        '[routing]\npreference = "cloud-first"\n\n'
        + model_toml("scripted", "echo", local=False)
        + model_toml("paced", "laptop")
    )
    _setup(home, notes)
    with OblixServer(home, plugin_dir=plugin_dir) as srv:
        yield srv


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_embeddings_create_works_in_both_encodings(client: openai.OpenAI) -> None:
    from oblix_docs.embedder import LocalEmbedder

    texts = ["reset the router", "bake a cake"]
    default = client.embeddings.create(model="local", input=texts)  # the client asks for base64
    floats = client.embeddings.create(model="local", input=texts, encoding_format="float")
    assert [len(d.embedding) for d in default.data] == [
        384,
        384,
    ] and default.model == "local:all-minilm-l6-v2"
    local = LocalEmbedder()
    expected = [list(v) for v in local.embed(texts)]
    local.close()
    for got in (default, floats):
        assert all(_cosine(d.embedding, e) > 0.999 for d, e in zip(got.data, expected, strict=True))


def test_embeddings_refuse_bad_input(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model="local", input=[[1, 2, 3]])


def test_a_private_workspace_keeps_the_chat_on_the_local_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "How do I reset it?"}],
        extra_body={"oblix_workspace": "diary"},
    )
    completion = raw.parse()
    assert raw.headers["X-Oblix-Model"] == "paced:laptop"
    sources = completion.model_extra["oblix"]["sources"]
    assert sources[0]["document"] == "router.md" and sources[0]["workspace"] == "diary"


def test_a_shared_workspace_may_go_to_the_cloud_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "How do I reset it?"}],
        extra_body={"oblix_workspace": "shared"},
    )
    assert raw.headers["X-Oblix-Model"] == "scripted:echo"
    assert raw.parse().model_extra["oblix"]["sources"][0]["workspace"] == "shared"


def test_a_private_workspace_never_reaches_a_forced_cloud_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="scripted:echo",
            messages=[{"role": "user", "content": "reset?"}],
            extra_body={"oblix_workspace": "diary"},
        )
    assert "private document workspace 'diary'" in caught.value.message


def test_an_unknown_workspace_is_a_clear_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="No workspace 'nowhere'"):
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"oblix_workspace": "nowhere"},
        )


def test_the_dashboard_lists_workspaces_and_their_sizes(server: OblixServer) -> None:
    import httpx

    listed = httpx.get(f"{server.root}/v1/oblix/workspaces", headers=server.auth, timeout=30).json()
    rows = {w["name"]: w for w in listed["workspaces"]}
    assert set(rows) == {"diary", "shared"}
    assert (
        rows["diary"]["private"] is True and rows["diary"]["documents"] == 1 and rows["diary"]["chunks"] >= 1
    )
    assert rows["shared"]["embedder"] == "local:all-minilm-l6-v2" and rows["shared"]["bytes"] > 0
    page = httpx.get(f"{server.root}/ui", timeout=30).text
    assert 'data-tab="documents"' in page and 'id="workspace-list"' in page
