"""Oblix: hybrid LLM orchestration between local and cloud models, with persistent sessions.

>>> from oblix import OblixClient, ModelType

Plugin authors import from :mod:`oblix.plugin`.
"""

from oblix import errors as errors
from oblix_core import __version__
from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.errors import OblixError
from oblix_core.models.backend import ModelBackend, ModelType
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request.conversation import ResponseStream

#: Oblix 0.1.2's name for the client (``from oblix import Oblix``), kept for its users.
Oblix = OblixClient

__all__ = [
    "AgentCheck",
    "AgentState",
    "BaseAgent",
    "ModelBackend",
    "ModelType",
    "Oblix",
    "OblixClient",
    "OblixError",
    "ResponseStream",
    "Target",
    "__version__",
    "errors",
    "hookimpl",
]
