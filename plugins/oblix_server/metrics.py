"""What the server observes: Prometheus metrics (``GET /metrics``), and the latest routing
decisions, failures and agents' readings for the dashboard.

The :class:`Observer` is registered as a plugin on the server's client, so it sees every
request through the ``oblix_request_end``/``oblix_request_error`` hooks. Metrics use the
official ``prometheus_client`` with a registry of the app's own (several apps in one
process never mix their counts):

* ``oblix_requests_total{model,route,locality}``, ``oblix_request_errors_total{error}``;
* ``oblix_tokens_total{model,direction}`` (``input``/``output``), ``oblix_cost_usd_total{model}``;
* ``oblix_request_latency_seconds{model,route}`` and ``oblix_time_to_first_token_seconds{model}``
  (histograms);
* ``oblix_model_available{model}``, ``oblix_model_cooling{model}`` and ``oblix_model_busy{model}``
  (gauges read from ``model_health()`` at each scrape).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from oblix.plugin import OblixClient, hookimpl

#: How often agents' readings are kept for the dashboard (seconds), and for how long.
READING_INTERVAL = 15.0
READING_SPAN = 3600.0
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _HealthCollector:
    """Gauges of each hooked model's health, read at scrape time."""

    def __init__(self, client: OblixClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Any]:
        gauges = {
            "available": GaugeMetricFamily(
                "oblix_model_available", "1 if routing would try the model", labels=["model"]
            ),
            "cooling": GaugeMetricFamily(
                "oblix_model_cooling", "1 while the model cools down", labels=["model"]
            ),
            "busy": GaugeMetricFamily(
                "oblix_model_busy", "1 while the model serves a request", labels=["model"]
            ),
        }
        for model_id, health in self.client.model_health().items():
            gauges["available"].add_metric([model_id], float(health["available"]))
            gauges["cooling"].add_metric([model_id], float(health["status"] == "cooling"))
            gauges["busy"].add_metric([model_id], float(health["busy"]))
        yield from gauges.values()


class Observer:
    """Counts requests for ``/metrics`` and keeps recent decisions, failures and readings."""

    def __init__(self, client: OblixClient, keep: int = 200) -> None:
        self.client = client
        self.decisions: deque[dict[str, Any]] = deque(maxlen=keep)
        self.failures: deque[dict[str, Any]] = deque(maxlen=keep)
        self.readings: deque[dict[str, Any]] = deque(maxlen=int(READING_SPAN / READING_INTERVAL) * 4)
        self._last_reading = 0.0
        self._lock = threading.Lock()
        self._by_answer: dict[tuple[str, str, bool], tuple[Any, ...]] = {}
        self.registry = CollectorRegistry()
        self._metrics()
        self.registry.register(_HealthCollector(client))

    def _metrics(self) -> None:
        r = self.registry
        self.requests = Counter(
            "oblix_requests", "Answered requests", ["model", "route", "locality"], registry=r
        )
        self.errors = Counter("oblix_request_errors", "Failed requests", ["error"], registry=r)
        self.replays = Counter(
            "oblix_replays", "Requests answered by replaying an earlier try (Idempotency-Key)", registry=r
        )
        self.tokens = Counter("oblix_tokens", "Tokens", ["model", "direction"], registry=r)
        self.cost = Counter("oblix_cost_usd", "Cost of the answers in USD", ["model"], registry=r)
        self.latency = Histogram(
            "oblix_request_latency_seconds",
            "Whole request",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "oblix_time_to_first_token_seconds",
            "To the first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(generate_latest(self.registry))

    @hookimpl
    def oblix_request_end(self, request: Any, result: dict[str, Any]) -> None:
        metrics, decision = result.get("metrics") or {}, result.get("routing_decision") or {}
        model, route = str(result.get("model_id")), str(decision.get("rule", ""))
        local = any(m.get("model_id") == model and m.get("local") for m in decision.get("models", ()))
        self.decisions.appendleft(
            {
                "at": time.time(),
                "request_id": result.get("request_id"),
                "session_id": result.get("session_id") if request.store else None,
                "model_id": model,
                "local": local,
                "rule": route,
                "reason": decision.get("reason", ""),
                "candidates": decision.get("candidates", []),
                "notes": decision.get("notes", []),
                "cost_usd": metrics.get("cost_usd", 0.0),
            }
        )
        self.sample_readings()
        requests, tokens_in, tokens_out, cost, latency, first_token = self._series(model, route, local)
        requests.inc()
        tokens_in.inc(metrics.get("input_tokens") or 0)
        tokens_out.inc(metrics.get("output_tokens") or 0)
        cost.inc(metrics.get("cost_usd") or 0.0)
        latency.observe((metrics.get("total_latency_ms") or 0) / 1000)
        if metrics.get("time_to_first_token_ms") is not None:
            first_token.observe(metrics["time_to_first_token_ms"] / 1000)

    def _series(self, model: str, route: str, local: bool) -> tuple[Any, ...]:
        """The labelled series one answer updates, made once per (model, route, locality)."""
        key = (model, route, local)
        series = self._by_answer.get(key)
        if series is None:
            series = self._by_answer[key] = (
                self.requests.labels(model, route, "local" if local else "cloud"),
                self.tokens.labels(model, "input"),
                self.tokens.labels(model, "output"),
                self.cost.labels(model),
                self.latency.labels(model, route),
                self.first_token.labels(model),
            )
        return series

    @hookimpl
    def oblix_request_replayed(self, request: Any, result: dict[str, Any]) -> None:
        self.replays.inc()

    @hookimpl
    def oblix_request_error(self, request: Any, error: BaseException) -> None:
        attempts = list(getattr(error, "attempts", None) or [])
        self.failures.appendleft(
            {
                "at": time.time(),
                "request_id": request.request_id,
                "error": type(error).__name__,
                "message": str(error)[:500],
                "models": sorted({a.get("model_id") for a in attempts if a.get("error")}),
            }
        )
        self.errors.labels(type(error).__name__).inc()

    def sample_readings(self, force: bool = False) -> None:
        """Keep the agents' latest readings (at most every :data:`READING_INTERVAL` s)."""
        now = time.time()
        if not force and now - self._last_reading < READING_INTERVAL:  # the usual case, without the lock
            return
        with self._lock:
            if not force and now - self._last_reading < READING_INTERVAL:
                return
            self._last_reading = now
        checks = [c.to_dict() for c in self.client.agent_checks()]
        self.readings.append({"at": now, "checks": checks})

    def recent_readings(self) -> list[dict[str, Any]]:
        self.sample_readings()
        cutoff = time.time() - READING_SPAN
        return [r for r in self.readings if r["at"] >= cutoff]

    def start_sampling(self, stop: threading.Event) -> None:
        """Sample the agents in a daemon thread until ``stop`` is set."""

        def loop() -> None:
            while not stop.wait(READING_INTERVAL):
                try:
                    self.sample_readings()
                except Exception:  # an agent failing to report must not end the sampling
                    continue

        threading.Thread(target=loop, name="oblix-server-readings", daemon=True).start()
