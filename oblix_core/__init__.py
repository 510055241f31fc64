"""Oblix core: hook specifications, client, routing, execution and sessions."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.errors import OblixError
from oblix_core.hookspecs import hookimpl
from oblix_core.models import ModelBackend, ModelType

try:
    __version__ = _version("oblix")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AgentCheck",
    "AgentState",
    "BaseAgent",
    "ModelBackend",
    "ModelType",
    "OblixClient",
    "OblixError",
    "Target",
    "__version__",
    "hookimpl",
]
