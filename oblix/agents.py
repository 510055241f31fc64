"""Monitoring agents: ``from oblix.agents import ResourceMonitor, ConnectivityAgent``."""

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_system import ConnectivityAgent, ResourceMonitor

__all__ = ["AgentCheck", "AgentState", "BaseAgent", "ConnectivityAgent", "ResourceMonitor", "Target"]
