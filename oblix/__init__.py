"""Oblix: hybrid LLM orchestration between local and cloud models, with persistent sessions.

>>> from oblix import OblixClient, ModelType
"""

from oblix_core import (
    AgentCheck,
    AgentState,
    BaseAgent,
    ModelBackend,
    ModelType,
    Oblix,
    OblixClient,
    OblixError,
    Target,
    __version__,
    errors,
    hookimpl,
)

__all__ = [
    "AgentCheck",
    "AgentState",
    "BaseAgent",
    "ModelBackend",
    "ModelType",
    "Oblix",
    "OblixClient",
    "OblixError",
    "Target",
    "__version__",
    "errors",
    "hookimpl",
]
