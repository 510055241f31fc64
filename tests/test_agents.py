"""ResourceMonitor and ConnectivityAgent with real measurements, and routing through execute.

Models in the routing tests are the scripted test double (``oblix_core.testing``); the
agents, their measurements and the TCP/HTTP servers they probe are real. All network
traffic stays on loopback.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from oblix import ModelType, OblixClient
from oblix.agents import ConnectivityAgent, ResourceMonitor
from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.errors import ConfigError, NoModelAvailableError
from oblix_core.testing import ScriptedPlugin
from tests.conftest import FAST
from tests.support import commands
from tests.support.net import free_port
from tests.support.waiting import wait_until

# -- ResourceMonitor -------------------------------------------------------------------


def _proc_memory_percent() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(fields["MemTotal"].split()[0])
    available = int(fields["MemAvailable"].split()[0])
    return 100.0 * (total - available) / total


@pytest.mark.serial  # compares with /proc's load average: another worker's tests move it
def test_readings_agree_with_proc() -> None:
    metrics = ResourceMonitor().measure()
    assert abs(metrics["memory_percent"] - _proc_memory_percent()) < 2.0
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    assert abs(metrics["load_1m"] - load1) < 0.5
    assert metrics["cpu_count"] == os.cpu_count()
    assert 0.0 <= metrics["cpu_percent"] <= 100.0
    assert metrics["load_normalized"] == pytest.approx(
        metrics["load_1m"] * 4 / metrics["cpu_count"], abs=0.02
    )
    json.dumps(metrics, allow_nan=False)


def test_absent_gpu_is_reported_not_raised() -> None:
    check = ResourceMonitor().refresh()
    gpu = check.metrics["gpu"]
    if gpu["present"]:  # on a machine with an NVIDIA GPU
        assert gpu["devices"] and 0 <= gpu["utilization"] <= 100
        assert check.target in (Target.LOCAL_GPU, Target.CLOUD)
    else:
        assert gpu["reason"] and check.state != AgentState.ERROR
        assert check.target in (Target.LOCAL_CPU, Target.CLOUD)


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.serial  # 'back to AVAILABLE' needs the other cores idle
def test_cpu_burners_drive_it_to_constrained_and_back() -> None:
    monitor = ResourceMonitor(
        custom_thresholds={"cpu_threshold": 60, "load_threshold": 1000}, interval=0.3, smoothing=2
    )
    monitor.start()
    try:
        ctx = multiprocessing.get_context("spawn")
        burners = [ctx.Process(target=_burn, args=(8.0,)) for _ in range(os.cpu_count() or 2)]
        for p in burners:
            p.start()
        assert wait_until(lambda: monitor.latest().state in (AgentState.CONSTRAINED, AgentState.CRITICAL))
        check = monitor.latest()
        assert check.target == Target.CLOUD and "CPU" in check.reason
        for p in burners:
            p.terminate()
            p.join()
        assert wait_until(lambda: monitor.latest().state == AgentState.AVAILABLE)
    finally:
        monitor.stop()


class ScriptedReadings(ResourceMonitor):
    """A ResourceMonitor fed fixed readings, to test the classification and smoothing rules."""

    def __init__(self, cpu: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cpu = cpu

    def measure(self) -> dict[str, Any]:
        return {
            "cpu_percent": self.cpu.pop(0),
            "memory_percent": 10.0,
            "load_normalized": 0.1,
            "gpu": {"present": False},
        }


def test_one_spike_does_not_flip_the_state() -> None:
    monitor = ScriptedReadings([10, 99, 10, 90, 90, 90, 10], smoothing=3)
    states = [monitor.refresh().state for _ in range(7)]
    assert states == [
        "AVAILABLE",
        "AVAILABLE",
        "AVAILABLE",
        "AVAILABLE",
        "AVAILABLE",
        "CONSTRAINED",
        "CONSTRAINED",
    ]
    monitor.cpu = [10]
    held = monitor.refresh()
    assert held.state == "CONSTRAINED" and "holding CONSTRAINED" in held.reason
    critical = ScriptedReadings([96], smoothing=1)
    assert critical.refresh().state == AgentState.CRITICAL


def test_bad_thresholds_are_rejected() -> None:
    with pytest.raises(ConfigError, match="cpu_treshold"):
        ResourceMonitor(custom_thresholds={"cpu_treshold": 50})


# -- ConnectivityAgent -----------------------------------------------------------------


class TcpServer:
    """A real TCP listener on loopback that can be stopped and restarted on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> TcpServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.sock = sock

        def accept() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()

        self.thread = threading.Thread(target=accept, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.sock:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port really closes
            self.sock.close()
            self.sock = None
        if self.thread:
            self.thread.join(5)


@pytest.fixture
def tcp() -> Iterator[TcpServer]:
    server = TcpServer().start()
    yield server
    server.stop()


def test_reachable_endpoint_is_optimal(tcp: TcpServer) -> None:
    agent = ConnectivityAgent(endpoints=[f"127.0.0.1:{tcp.port}"])
    check = agent.refresh()
    assert check.state == AgentState.OPTIMAL
    assert check.metrics["latency_ms"] is not None and check.metrics["packet_loss"] == 0.0
    json.dumps(check.to_dict(), allow_nan=False)


def test_closed_port_is_disconnected_and_json_safe() -> None:
    agent = ConnectivityAgent(endpoints=[f"http://127.0.0.1:{free_port()}/v1"])
    check = agent.refresh()
    assert check.state == AgentState.DISCONNECTED and check.target == Target.LOCAL
    assert check.metrics["latency_ms"] is None and check.metrics["packet_loss"] == 100.0
    json.dumps(check.to_dict(), allow_nan=False)


def test_latency_threshold_degrades(tcp: TcpServer) -> None:
    agent = ConnectivityAgent(endpoints=[f"127.0.0.1:{tcp.port}"], latency_threshold=0)
    check = agent.refresh()
    assert check.state == AgentState.DEGRADED and "latency" in check.reason


def test_server_stop_and_restart_within_one_interval(tcp: TcpServer) -> None:
    agent = ConnectivityAgent(
        endpoints=[f"127.0.0.1:{tcp.port}"], check_interval=0.3, packet_loss_threshold=100
    )
    agent.start()
    try:
        assert wait_until(lambda: agent.latest().state == AgentState.OPTIMAL)
        tcp.stop()
        assert wait_until(lambda: agent.latest().state == AgentState.DISCONNECTED, timeout=2.0)
        tcp.start()
        assert wait_until(lambda: agent.latest().state == AgentState.OPTIMAL, timeout=2.0)
    finally:
        agent.stop()


def test_loss_over_the_window_degrades(tcp: TcpServer) -> None:
    agent = ConnectivityAgent(
        endpoints=[f"127.0.0.1:{tcp.port}"], packet_loss_threshold=10, probes=3, window=6
    )
    assert agent.refresh().state == AgentState.OPTIMAL
    tcp.stop()
    assert agent.refresh().state == AgentState.DISCONNECTED
    tcp.start()
    check = agent.refresh()  # reachable again, but half of the window was lost
    assert check.state == AgentState.DEGRADED and check.metrics["packet_loss"] == 50.0


class Payload(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b"x" * 2**20
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_bandwidth_estimate() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Payload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/blob"
    try:
        fast = ConnectivityAgent(endpoints=[url], bandwidth_url=url).refresh()
        assert fast.state == AgentState.OPTIMAL and fast.metrics["bandwidth_mbps"] > 5
        slow = ConnectivityAgent(endpoints=[url], bandwidth_url=url, bandwidth_threshold=1e9).refresh()
        assert slow.state == AgentState.DEGRADED and "bandwidth" in slow.reason
    finally:
        server.shutdown()
        server.server_close()


# -- routing end to end --------------------------------------------------------------------


@pytest.mark.anyio
async def test_cloud_endpoint_down_is_answered_locally(home: Path, scripted: ScriptedPlugin) -> None:
    client = OblixClient(home=home, plugins=[scripted], execution=FAST, preference="cloud-first")
    await client.hook_model(
        ModelType.OPENAI, "gpt-4o-mini", endpoint=f"http://127.0.0.1:{free_port()}/v1", api_key="k"
    )
    await client.hook_model("scripted", "local")
    agent = ConnectivityAgent(check_interval=60)
    client.hook_agent(agent)
    # the agent probes the hooked OpenAI endpoint
    assert wait_until(lambda: agent.latest().state == AgentState.DISCONNECTED)
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "scripted:local"
    assert result["routing_decision"]["rule"] == "disconnected"
    assert result["routing_decision"]["candidates"] == ["scripted:local"]  # the cloud was not even tried
    assert result["agent_checks"]["connectivity"]["state"] == AgentState.DISCONNECTED
    await client.shutdown()


@pytest.mark.serial  # the monitor reads the machine: a busy CPU makes it CRITICAL, not CONSTRAINED
@pytest.mark.anyio
async def test_constrained_resources_go_to_the_cloud(home: Path, scripted: ScriptedPlugin) -> None:
    client = OblixClient(home=home, plugins=[scripted])
    await client.hook_model("scripted", "local")
    await client.hook_model("scripted", "cloud", local=False)
    monitor = ResourceMonitor(custom_thresholds={"memory_threshold": 0.1}, interval=60, smoothing=1)
    client.hook_agent(monitor)
    assert wait_until(lambda: monitor.latest().state == AgentState.CONSTRAINED)
    result = await client.execute("hi", stream=False)
    assert (
        result["model_id"] == "scripted:cloud" and result["routing_decision"]["rule"] == "local-constrained"
    )
    assert "memory" in result["routing_decision"]["reason"]
    await client.shutdown()


@pytest.mark.anyio
async def test_local_only_session_with_only_a_cloud_model(home: Path, scripted: ScriptedPlugin) -> None:
    client = OblixClient(home=home, plugins=[scripted])
    await client.hook_model("scripted", "cloud", local=False)
    sid = await client.create_session(metadata={"local_only": True})
    with pytest.raises(NoModelAvailableError, match="nothing was sent"):
        await client.execute("my private data", session_id=sid, stream=False)
    assert len(scripted.calls["cloud"]) == 0 and client.load_session(sid)["messages"] == []
    await client.shutdown()


def test_agents_cli_json(home: Path) -> None:
    (home / "config.toml").write_text('[agents]\nenabled = ["resource_monitor"]\n')
    result = commands.invoke("agents", "--json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.output)
    assert [c["agent"] for c in checks] == ["resource_monitor"]
    assert set(checks[0]) == {"agent", "state", "target", "reason", "metrics"}
    assert checks[0]["state"] in (AgentState.AVAILABLE, AgentState.CONSTRAINED, AgentState.CRITICAL)


# -- Oblix's own load, fresh samples ------------------------------------------------------


def _hash_forever(stop: threading.Event) -> None:
    import hashlib

    block = b"x" * 2**22
    while not stop.is_set():
        hashlib.sha256(block).digest()  # releases the GIL: really uses a core


def test_own_cpu_is_told_apart_from_other_programs() -> None:
    monitor = ResourceMonitor(smoothing=1)
    stop = threading.Event()
    burners = [threading.Thread(target=_hash_forever, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for t in burners:
        t.start()
    me = psutil.Process()
    try:
        time.sleep(0.3)
        monitor.measure()  # start a span with the burners running
        cpu0, t0 = sum(me.cpu_times()[:2]), time.monotonic()
        time.sleep(0.5)
        cpu1, t1 = sum(me.cpu_times()[:2]), time.monotonic()
        metrics = monitor.measure()
    finally:
        stop.set()
        for t in burners:
            t.join()
    # this process's CPU over the span, as a share of the machine, measured independently
    expected = 100 * (cpu1 - cpu0) / (t1 - t0) / (os.cpu_count() or 1)
    assert metrics["oblix_cpu_percent"] > 1 and metrics["oblix_cpu_percent"] == pytest.approx(
        expected, abs=12
    )
    assert metrics["other_cpu_percent"] == pytest.approx(
        max(0.0, metrics["cpu_percent"] - metrics["oblix_cpu_percent"]), abs=0.2
    )
    _, reason = monitor.classify(metrics)
    assert "Oblix itself" in reason


class Readings(ResourceMonitor):
    """A ResourceMonitor fed one fixed reading, to test the classification rule."""

    def __init__(self, **reading: float) -> None:
        super().__init__(smoothing=1)
        self.reading = reading

    def measure(self) -> dict[str, Any]:
        base = {"memory_percent": 10.0, "load_normalized": 0.1, "gpu": {"present": False}}
        return base | self.reading


def test_only_other_programs_make_the_machine_busy() -> None:
    own_work = Readings(cpu_percent=99, oblix_cpu_percent=95, other_cpu_percent=4, other_load_normalized=8)
    assert own_work.refresh().state == AgentState.AVAILABLE  # Oblix generating; lagging load ignored
    others = Readings(cpu_percent=99, oblix_cpu_percent=10, other_cpu_percent=89, other_load_normalized=1)
    check = others.refresh()
    assert check.state == AgentState.CONSTRAINED and "other programs" in check.reason
    loaded = Readings(cpu_percent=60, oblix_cpu_percent=0, other_cpu_percent=60, other_load_normalized=6)
    assert loaded.refresh().state == AgentState.CONSTRAINED and "load" in loaded.refresh().reason


class SlowAgent(BaseAgent):
    """A custom agent whose first sample takes ``delay`` seconds."""

    default_name = "slow"

    def __init__(self, delay: float) -> None:
        super().__init__(interval=60)
        self.delay = delay

    def sample(self) -> AgentCheck:
        time.sleep(self.delay)
        return AgentCheck(self.name, "PREFER_CLOUD", Target.CLOUD, reason=f"took {self.delay}s")


@pytest.mark.anyio
async def test_first_request_takes_a_fresh_sample_or_says_it_had_none(
    home: Path, scripted: ScriptedPlugin
) -> None:
    async def decide(delay: float) -> dict[str, Any]:
        client = OblixClient(home=home, plugins=[scripted])
        await client.hook_model("scripted", "local")
        await client.hook_model("scripted", "cloud", local=False)
        client.hook_agent(SlowAgent(delay))
        result = await client.execute("hi", stream=False)
        await client.shutdown()
        return result

    fresh = await decide(0.05)  # one-shot: the agent has not sampled yet when the request starts
    assert fresh["routing_decision"]["agents"][0]["source"] == "fresh"
    assert fresh["model_id"] == "scripted:cloud" and fresh["routing_decision"]["rule"] == "agent-target"
    persisted = await decide(2.0)  # too slow for 300 ms: the reading saved a moment ago stands in
    assert persisted["routing_decision"]["agents"][0]["source"] == "persisted"
    assert persisted["model_id"] == "scripted:cloud"
    (home / "agent-readings.json").unlink()
    none = await decide(2.0)
    decision = none["routing_decision"]
    assert decision["agents"][0]["source"] == "none" and decision["agents"][0]["state"] == "PENDING"
    assert any("slow had no reading" in note for note in decision["notes"])
    assert none["model_id"] == "scripted:local"  # routed without it, and said so
    readings = home / "agent-readings.json"
    assert wait_until(lambda: readings.exists() and "slow" in json.loads(readings.read_text()))
    later = await decide(2.0)  # the reading that came too late was saved for the next command
    assert later["routing_decision"]["agents"][0]["source"] == "persisted"


@pytest.mark.anyio
async def test_shutdown_waits_for_the_late_reading_to_be_saved(
    home: Path, scripted: ScriptedPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-shot command exits right after shutdown(): the reading its request could not
    wait for must be on disk by then (a slow disk made the save lose the race before)."""
    from oblix_core.models.health import JsonFile

    plain_update = JsonFile.update

    def slow_update(self: JsonFile, values: dict[str, Any]) -> None:
        time.sleep(0.5)
        plain_update(self, values)

    monkeypatch.setattr(JsonFile, "update", slow_update)
    client = OblixClient(home=home, plugins=[scripted])
    await client.hook_model("scripted", "local")
    client.hook_agent(SlowAgent(1.0))
    result = await client.execute("hi", stream=False)
    assert result["routing_decision"]["agents"][0]["source"] == "none"
    await client.shutdown()
    saved = json.loads((home / "agent-readings.json").read_text())
    assert saved["slow"]["reason"] == "took 1.0s"


@pytest.mark.anyio
async def test_other_programs_burning_cpu_send_requests_to_the_cloud(
    home: Path, scripted: ScriptedPlugin
) -> None:
    client = OblixClient(home=home, plugins=[scripted])
    await client.hook_model("scripted", "local")
    await client.hook_model("scripted", "cloud", local=False)
    monitor = ResourceMonitor(custom_thresholds={"cpu_threshold": 60}, interval=0.3, smoothing=1)
    ctx = multiprocessing.get_context("spawn")
    burners = [ctx.Process(target=_burn, args=(10.0,)) for _ in range(os.cpu_count() or 2)]
    for p in burners:
        p.start()
    try:
        client.hook_agent(monitor)
        assert wait_until(lambda: monitor.latest().state in (AgentState.CONSTRAINED, AgentState.CRITICAL))
        result = await client.execute("hi", stream=False)
    finally:
        for p in burners:
            p.terminate()
            p.join()
    assert (
        result["model_id"] == "scripted:cloud" and result["routing_decision"]["rule"] == "local-constrained"
    )
    assert "other programs" in result["routing_decision"]["reason"]
    metrics = result["agent_checks"]["resource_monitor"]["metrics"]
    assert metrics["other_cpu_percent"] >= 60 and metrics["oblix_cpu_percent"] < 30
    await client.shutdown()


# -- stopping does not wait for a sample -------------------------------------------------------


class _Spanning(BaseAgent):
    """An agent that measures over a span with ``pause`` (as the resource monitor does)."""

    def __init__(self, span: float) -> None:
        super().__init__(name="spanning", interval=60)
        self.span = span
        self.samples = 0
        self.pausing = threading.Event()

    def sample(self) -> AgentCheck:
        self.samples += 1
        number = self.samples
        self.pausing.set()
        self.pause(self.span)
        return AgentCheck(self.name, AgentState.AVAILABLE, reason=f"sample {number}")


def test_stopping_abandons_a_later_sample_at_once_and_publishes_nothing() -> None:
    """Before, ``stop()`` waited for the sample under way: every one-shot command waited up to
    0.2 s at exit for the resource monitor's second CPU span (0.19 s of a 0.3 s ``oblix run``)."""
    agent = _Spanning(span=0.05)
    agent.start()
    first = agent.wait_first(10)
    assert first.reason == "sample 1" and agent.samples == 1  # told its models before start: no 2nd at once
    agent.span = 60.0
    agent.pausing.clear()
    agent.set_models(())  # the models changed: a second sample, which waits 60 s
    assert agent.pausing.wait(10)
    thread = agent._thread
    agent.stop(timeout=10)
    assert thread is not None and not thread.is_alive()  # it did not sit out the minute
    assert agent.latest() is first  # abandoned: nothing published


def test_a_first_sample_still_waits_its_span_when_stopped() -> None:
    """The first sample is what a one-shot command saves for the next: stopping waits for it."""
    agent = _Spanning(span=0.3)
    agent.start()
    assert agent.pausing.wait(10)
    agent.stop(timeout=10)
    assert agent.latest().reason == "sample 1" and agent.latest().state == AgentState.AVAILABLE


def test_the_resource_monitor_stops_without_finishing_its_span() -> None:
    monitor = ResourceMonitor(interval=60)
    monitor.start()
    first = monitor.wait_first(10)
    assert first.state != AgentState.PENDING
    sampling = threading.Event()
    measure = monitor.measure

    def slow_measure() -> dict[str, Any]:
        sampling.set()
        monitor._cpu_primed_at = time.monotonic() + 60  # the next span is a minute long
        return measure()

    monitor.measure = slow_measure  # type: ignore[method-assign]
    monitor.set_models(())
    assert sampling.wait(10)
    thread = monitor._thread
    monitor.stop(timeout=10)
    assert thread is not None and not thread.is_alive() and monitor.latest() is first
