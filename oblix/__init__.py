"""Oblix: hybrid LLM orchestration between local and cloud models, with persistent sessions.

>>> from oblix import OblixClient, ModelType
"""

from oblix_core import *  # noqa: F403 - the public face re-exports the core's public names
from oblix_core import __all__ as _core_names
from oblix_core import errors

__all__ = [*_core_names, "errors"]
