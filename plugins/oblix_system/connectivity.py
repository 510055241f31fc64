"""``ConnectivityAgent``: reachability, latency and loss of the cloud endpoints.

Every ``check_interval`` seconds, in its own thread, it opens ``probes`` TCP
connections to each endpoint (the hooked cloud models' endpoints, or ``endpoints``)
and keeps the outcomes of the last ``window`` probes per endpoint. Verdicts:

* ``DISCONNECTED`` -- every probe of the latest round failed on every endpoint
  (so it is reached within one interval, and left as soon as one probe succeeds);
* ``DEGRADED``     -- median latency above ``latency_threshold`` ms, loss over the window
  above ``packet_loss_threshold`` %, or measured bandwidth below ``bandwidth_threshold``
  Mbit/s (only when ``bandwidth_url`` is set);
* ``OPTIMAL``      -- otherwise; ``IDLE`` when there is nothing to probe.

A failed probe is data, never an exception; metrics hold no ``inf``/``NaN``.
"""

from __future__ import annotations

import socket
import statistics
import time
import urllib.request
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from oblix.plugin import AgentCheck, AgentState, BaseAgent, ConfigError, Target

OPENAI_DEFAULT = "https://api.openai.com/v1"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host, port`` from a URL (``https://h/v1``) or ``host:port``."""
    url = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    if not url.hostname:
        raise ConfigError(f"Cannot probe endpoint {endpoint!r}: give a URL or host:port.")
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    if port is None:
        raise ConfigError(f"Endpoint {endpoint!r} needs a port (host:port).")
    return url.hostname, port


def probe(host: str, port: int, timeout: float) -> float | None:
    """Milliseconds to open a TCP connection, or None if it failed."""
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return round((time.perf_counter() - started) * 1000, 2)
    except OSError:
        return None


class ConnectivityAgent(BaseAgent):
    """Watches the network path to the cloud models; see the module docstring."""

    default_name = "connectivity"

    def __init__(
        self,
        name: str | None = None,
        latency_threshold: float = 200,
        packet_loss_threshold: float = 10,
        bandwidth_threshold: float = 5,
        check_interval: float = 30,
        endpoints: list[str] | None = None,
        *,
        probes: int = 3,
        window: int = 20,
        timeout: float = 2.0,
        bandwidth_url: str | None = None,
    ) -> None:
        super().__init__(name, check_interval)
        self.latency_threshold = float(latency_threshold)
        self.packet_loss_threshold = float(packet_loss_threshold)
        self.bandwidth_threshold = float(bandwidth_threshold)
        self.endpoints = [parse_endpoint(e) for e in endpoints] if endpoints else None
        if probes < 1 or window < probes:
            raise ConfigError("probes must be at least 1 and window at least probes.")
        self.probes = probes
        self.timeout = timeout
        self.bandwidth_url = bandwidth_url
        self._history: dict[str, deque[float | None]] = {}
        self._window = window

    def targets(self) -> list[tuple[str, int]]:
        """What to probe: ``endpoints``, else the hooked cloud models' endpoints."""
        if self.endpoints is not None:
            return list(self.endpoints)
        found = []
        for model in self.models:
            if not model.is_local:
                endpoint = model.describe().get("endpoint") or model.endpoint or OPENAI_DEFAULT
                target = parse_endpoint(str(endpoint))
                if target not in found:
                    found.append(target)
        return found

    def bandwidth_mbps(self) -> float | None:
        """Download speed of ``bandwidth_url`` (up to 2 MB), or None if unmeasured."""
        if not self.bandwidth_url:
            return None
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.bandwidth_url, timeout=self.timeout * 5) as response:
                size = len(response.read(2 * 2**20))
        except OSError:
            return None
        elapsed = max(time.perf_counter() - started, 1e-6)
        return round(size * 8 / elapsed / 1e6, 2)

    def sample(self) -> AgentCheck:
        targets = self.targets()
        if not targets:
            return AgentCheck(
                self.name, AgentState.IDLE, None, "no cloud endpoint to probe", {"endpoints": {}}
            )
        per_endpoint: dict[str, Any] = {}
        any_reached = False
        latencies: list[float] = []
        lost = total = 0
        for host, port in targets:
            key = f"{host}:{port}"
            round_ = [probe(host, port, self.timeout) for _ in range(self.probes)]
            history = self._history.setdefault(key, deque(maxlen=self._window))
            history.extend(round_)
            ok = [r for r in round_ if r is not None]
            any_reached = any_reached or bool(ok)
            window_ok = [r for r in history if r is not None]
            loss = round(100.0 * (len(history) - len(window_ok)) / len(history), 1)
            latency = round(statistics.median(ok), 2) if ok else None
            per_endpoint[key] = {"reachable": bool(ok), "latency_ms": latency, "packet_loss": loss}
            latencies.extend(ok)
            lost += len(history) - len(window_ok)
            total += len(history)
        latency = round(statistics.median(latencies), 2) if latencies else None
        loss = round(100.0 * lost / total, 1) if total else 0.0
        bandwidth = self.bandwidth_mbps() if any_reached else None
        metrics = {
            "latency_ms": latency,
            "packet_loss": loss,
            "bandwidth_mbps": bandwidth,
            "endpoints": per_endpoint,
        }
        if not any_reached:
            names = ", ".join(per_endpoint)
            return AgentCheck(
                self.name, AgentState.DISCONNECTED, Target.LOCAL, f"no endpoint reachable ({names})", metrics
            )
        problems = []
        if latency is not None and latency > self.latency_threshold:
            problems.append(f"latency {latency:g} ms > {self.latency_threshold:g} ms")
        if loss > self.packet_loss_threshold:
            problems.append(f"loss {loss:g}% > {self.packet_loss_threshold:g}%")
        if bandwidth is not None and bandwidth < self.bandwidth_threshold:
            problems.append(f"bandwidth {bandwidth:g} Mbit/s < {self.bandwidth_threshold:g} Mbit/s")
        if problems:
            return AgentCheck(self.name, AgentState.DEGRADED, Target.LOCAL, "; ".join(problems), metrics)
        return AgentCheck(
            self.name, AgentState.OPTIMAL, None, f"latency {latency:g} ms, loss {loss:g}%", metrics
        )
