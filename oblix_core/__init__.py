"""Oblix core: hook specifications, client, routing, execution and sessions.

The public faces are :mod:`oblix` (applications) and :mod:`oblix.plugin` (plugin
authors); the submodules here are private. The names below are loaded on first use, so
that importing a submodule never imports the whole client.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:
    __version__ = _version("oblix")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "AgentCheck": "oblix_core.agents",
    "AgentState": "oblix_core.agents",
    "BaseAgent": "oblix_core.agents",
    "Target": "oblix_core.agents",
    "OblixClient": "oblix_core.client",
    "OblixError": "oblix_core.errors",
    "hookimpl": "oblix_core.plugins.hookspecs",
    "ModelBackend": "oblix_core.models.backend",
    "ModelType": "oblix_core.models.backend",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oblix_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
