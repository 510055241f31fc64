"""The server resolves model names as the CLI does: ids, [aliases] names and bare names."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.server_process import OblixServer, model_toml, write_plugin_dist


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OblixServer]:
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        model_toml("paced", "local", delay=0.01)
        + model_toml("scripted", "echo", local=False)
        + '[aliases]\nfast = "scripted:echo"\nnowhere = "openai:not-hooked"\n'
    )
    with OblixServer(home, plugin_dir=plugin_dir) as srv:
        yield srv


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("name", ["fast", "echo", "scripted:echo"])
def test_aliases_and_bare_names_are_served(client: openai.OpenAI, name: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=name, messages=[{"role": "user", "content": "hey"}]
    )
    assert raw.parse().choices[0].message.content == "echo: hey"
    assert raw.headers["X-Oblix-Model"] == "scripted:echo"


def test_aliases_are_listed_and_retrievable(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert listed["fast"].model_extra["alias_of"] == "scripted:echo"
    assert "nowhere" not in listed  # an alias of a model this server does not serve
    assert client.models.retrieve("fast").model_extra["alias_of"] == "scripted:echo"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nowhere", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found" and "fast" in caught.value.message
