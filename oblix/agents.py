"""Monitoring agents: ``from oblix.agents import ResourceMonitor, ConnectivityAgent``.

The base types are the core's; the two monitors are the classes the ``system`` plugin
registers, looked up through the plugin registry when first asked for (this module imports
no plugin, and a missing or disabled plugin is a clear :class:`~oblix.errors.PluginError`).
"""

from __future__ import annotations

from typing import Any

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target

#: Public class name -> the agent name its plugin registers.
_REGISTERED = {"ResourceMonitor": "resource_monitor", "ConnectivityAgent": "connectivity"}


def __getattr__(name: str) -> Any:
    if name not in _REGISTERED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from oblix_core.plugins.registry import Registry

    cls = Registry.load().agent_class(_REGISTERED[name])
    globals()[name] = cls
    return cls


__all__ = [  # noqa: F822 - ConnectivityAgent and ResourceMonitor come from __getattr__
    "AgentCheck",
    "AgentState",
    "BaseAgent",
    "ConnectivityAgent",
    "ResourceMonitor",
    "Target",
]
