"""Built-in monitoring agents: machine resources (psutil, NVML) and network connectivity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl
from oblix_system.connectivity import ConnectivityAgent
from oblix_system.resources import ResourceMonitor

__all__ = ["ConnectivityAgent", "ResourceMonitor"]


@hookimpl
def oblix_register_agents(register: Callable[[str, Any], None]) -> None:
    register("resource_monitor", ResourceMonitor)
    register("connectivity", ConnectivityAgent)
