"""Oblix core: hook specifications, client, routing, execution and sessions."""

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import Oblix, OblixClient
from oblix_core.errors import OblixError
from oblix_core.hookspecs import hookimpl
from oblix_core.models import ModelBackend, ModelType

__version__ = "0.1.0"

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
    "hookimpl",
]
