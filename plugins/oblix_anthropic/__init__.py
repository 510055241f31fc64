"""Claude on Anthropic's Messages API (``ModelType.CLAUDE``; extra ``oblix[anthropic]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs("anthropic", install="pip install 'oblix[anthropic]'")

from oblix_anthropic.backend import AnthropicBackend  # noqa: E402 - after the dependency check

__all__ = ["AnthropicBackend"]


@hookimpl
def oblix_register_models(register: Callable[[str, Any], None]) -> None:
    register("claude", AnthropicBackend)
