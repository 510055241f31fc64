"""A third-party plugin: a model type, a session store name and a CLI command."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import click

from oblix.plugin import GenerationRequest, ModelBackend, StreamChunk, hookimpl


class ShoutBackend(ModelBackend):
    """Answers with the prompt in upper case."""

    model_type = "shout"

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk(request.messages[-1].content.upper())


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("shout", ShoutBackend)


@hookimpl
def oblix_register_commands(cli: click.Group) -> None:
    @cli.command()
    def hello() -> None:
        """Say hello from a plugin."""
        click.echo("hello from oblix-hello")
