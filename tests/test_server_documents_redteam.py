"""``oblix server`` and documents, red-team (issue 30): a chat completion's ``oblix_workspace``
given as a list mixing a private and a shared workspace (by name and by id), streamed or not, and
of bad types -- with the official ``openai`` client against a real ``oblix server`` process."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import anyio
import openai
import pytest

from oblix_core.client import OblixClient
from tests.server_process import OblixServer, model_toml, write_plugin_dist

pytest.importorskip("oblix_docs")
pytestmark = pytest.mark.slow
#: The server's own OpenAI key (never used: the models are the server tests' doubles).
SERVER_KEY = "sk-server-own-key-4471"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OblixServer, str]]:
    notes = tmp_path_factory.mktemp("notes")
    (notes / "router.md").write_text("# Router\n\n## Reset\n\nHold the red button for 12 seconds.\n")
    (notes / "cake.md").write_text("# Cake\n\nBake the lemon cake at 180 degrees.\n")
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        '[routing]\npreference = "cloud-first"\n\n'
        + model_toml("scripted", "echo", local=False)
        + model_toml("paced", "laptop")
    )

    async def setup() -> str:
        async with OblixClient(home=home) as client:
            diary = await client.create_workspace("diary", private=True)
            await client.upload_document(str(notes / "router.md"), workspace_id=diary, embed=True)
            shared = await client.create_workspace("shared")
            await client.upload_document(str(notes / "cake.md"), workspace_id=shared, embed=True)
            return diary

    diary_id = anyio.run(setup)
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    with OblixServer(home, plugin_dir=plugin_dir, env={"OPENAI_API_KEY": SERVER_KEY}) as srv:
        yield srv, diary_id


@pytest.fixture
def client(server: tuple[OblixServer, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].base_url, api_key="unused", max_retries=0)


def test_a_list_with_a_private_workspace_stays_on_the_local_model(
    client: openai.OpenAI, server: tuple[OblixServer, str]
) -> None:
    # was: a list was refused (400), though execute(workspace_id=[...]) takes one
    for workspaces in (["shared", "diary"], ["shared", server[1]]):
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "How do I reset the router?"}],
            extra_body={"oblix_workspace": workspaces},
        )
        assert raw.headers["X-Oblix-Model"] == "paced:laptop"
        sources = (raw.parse().model_extra or {})["oblix"]["sources"]
        assert {s["workspace"] for s in sources} == {"diary", "shared"}


def test_a_streamed_list_with_a_private_workspace_stays_local(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="auto",
        messages=[{"role": "user", "content": "How do I reset the router?"}],
        stream=True,
        extra_body={"oblix_workspace": ["diary", "shared"]},
    ) as response:
        assert response.headers["X-Oblix-Model"] == "paced:laptop"
        assert "".join(response.iter_text())


def test_a_list_with_a_private_workspace_never_reaches_a_forced_cloud_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="scripted:echo",
            messages=[{"role": "user", "content": "reset?"}],
            extra_body={"oblix_workspace": ["shared", "diary"]},
        )
    assert "private document workspace 'diary'" in caught.value.message


@pytest.mark.parametrize("bad", [[], [""], ["diary", 3], 3, {"name": "diary"}, True])
def test_a_bad_workspace_field_is_a_400(client: openai.OpenAI, bad: object) -> None:
    with pytest.raises(openai.BadRequestError, match="oblix_workspace"):
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], extra_body={"oblix_workspace": bad}
        )


class _Listener(http.server.BaseHTTPRequestHandler):
    """A loopback endpoint that records every request it gets (what a caller's URL would reach)."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.seen.append(f"{self.path} {self.headers.get('Authorization')}")
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_embeddings_never_go_to_an_endpoint_the_caller_names(client: openai.OpenAI) -> None:
    # was: model "openai:M@URL" made the server POST the texts to URL with its own OPENAI_API_KEY
    listener = http.server.HTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.server_address[1]}/v1"
        for model in (f"openai:text-embedding-3-small@{url}", f"ollama:nomic-embed-text@{url}"):
            with pytest.raises(openai.UnprocessableEntityError, match="not an endpoint"):
                client.embeddings.create(model=model, input=["my private text"])
    finally:
        listener.shutdown()
        thread.join()
    assert _Listener.seen == []
