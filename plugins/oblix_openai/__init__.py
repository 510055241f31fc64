"""OpenAI and OpenAI-compatible endpoints (``ModelType.OPENAI``; extra ``oblix[openai]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs("openai", install="pip install 'oblix[openai]'")

from oblix_openai.backend import OpenAIBackend  # noqa: E402 - after the dependency check

__all__ = ["OpenAIBackend"]


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("openai", OpenAIBackend)


@hookimpl
def oblix_register_embedders(register: Callable[[str, Any], None]) -> None:
    from oblix_openai.embeddings import make_openai_embedder

    register("openai", make_openai_embedder)
