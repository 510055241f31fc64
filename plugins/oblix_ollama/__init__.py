"""Models served by Ollama (``ModelType.OLLAMA``; extra ``oblix[ollama]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs("ollama", install="pip install 'oblix[ollama]'")

from oblix_ollama.backend import OllamaBackend  # noqa: E402 - after the dependency check

__all__ = ["OllamaBackend"]


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("ollama", OllamaBackend)


@hookimpl
def oblix_register_embedders(register: Callable[[str, Any], None]) -> None:
    from oblix_ollama.embeddings import make_ollama_embedder

    register("ollama", make_ollama_embedder)
