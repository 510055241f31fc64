"""Models served by Ollama (``ModelType.OLLAMA``; extra ``oblix[ollama]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix_core import hookimpl
from oblix_ollama.backend import OllamaBackend

__all__ = ["OllamaBackend"]


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("ollama", OllamaBackend)
