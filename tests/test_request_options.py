"""Per-request options: a backend declares what it takes (``request_options``), and an option no
candidate model takes is an error naming what was meant. The Ollama backend runs with the
official ``ollama`` client against ``tests/ollama_double.py`` (a test double of the Ollama
server: its binary cannot be installed here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix import OblixClient
from oblix_core.errors import ConfigError
from oblix_core.plugins.registry import Registry
from oblix_core.testing import ScriptedPlugin
from tests.ollama_double import OllamaDouble


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double


@pytest.mark.anyio
async def test_a_misspelt_option_is_an_error_naming_the_right_one(ollama: OllamaDouble, home: Path) -> None:
    async with OblixClient(home=home) as client:
        await client.hook_model("ollama", "llama2", endpoint=ollama.url)
        sent = len(ollama.requests)
        with pytest.raises(
            ConfigError, match=r"Unknown model option 'temprature'.*Did you mean 'temperature'"
        ):
            await client.execute("hi", stream=False, temprature=0.1)
        assert len(ollama.requests) == sent  # refused before anything was sent
        answer = await client.execute("hi", stream=False, top_p=0.5, store=False)
        assert answer["response"] and ollama.requests[-1]["options"]["top_p"] == 0.5


@pytest.mark.anyio
async def test_a_backend_that_passes_options_through_lets_any_option_by(
    ollama: OllamaDouble, home: Path
) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:
        await client.hook_model("ollama", "llama2", endpoint=ollama.url)
        await client.hook_model("scripted", "echo")  # request_options None: takes anything
        answer = await client.execute("hi", stream=False, store=False, vendor_field=1)
        assert answer["response"]
        with pytest.raises(ConfigError, match="temprature"):  # forced onto the declaring model only
            await client.execute("hi", stream=False, model="ollama:llama2", temprature=0.1)


def test_first_party_local_backends_declare_their_options() -> None:
    registry = Registry.load()
    for model_type in ("llama_cpp", "ollama"):
        declared = registry.model_class(model_type).request_options
        assert declared is not None and {"top_p", "stop", "seed"} <= declared, model_type


def test_the_command_line_says_the_same(ollama: OllamaDouble, home: Path) -> None:
    from tests.support import commands

    (home / "config.toml").write_text(
        f'[[models]]\ntype = "ollama"\nname = "llama2"\nendpoint = "{ollama.url}"\n'
    )
    done = commands.invoke("run", "-m", "llama2", "-o", "temprature", "0.1", "hi")
    assert done.exit_code == 1 and "Did you mean 'temperature'" in done.output, done.output
    ran = commands.invoke("run", "-m", "llama2", "-o", "top_p", "0.5", "hi")
    assert ran.exit_code == 0, ran.output
    assert ollama.requests[-1]["options"]["top_p"] == 0.5
