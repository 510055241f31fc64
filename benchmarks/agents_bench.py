"""Cost of the agents on the request path, and of a whole ``execute`` with and without them.

* ``agent_checks()``: what a request pays to read both agents' cached verdicts;
* one probe round of each agent (paid in the agents' threads, not by requests), for scale;
* ``execute`` with an instant backend (the scripted test double answering at once) on
  the file store, without agents versus with ResourceMonitor + ConnectivityAgent.

Run: ``.venv/bin/python -m benchmarks.agents_bench``.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time

import anyio

from benchmarks._table import median_ms, p99_ms, print_table, time_calls
from oblix import OblixClient
from oblix.agents import ConnectivityAgent, ResourceMonitor
from oblix_core.testing import ScriptedPlugin


def loopback_listener() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)

    def accept() -> None:
        while True:
            conn, _ = sock.accept()
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return int(sock.getsockname()[1])


async def execute_times(client: OblixClient, session_id: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await client.execute("ping", session_id=session_id, stream=False)
        samples.append(time.perf_counter() - started)
    return samples


async def main() -> None:
    port = loopback_listener()
    rows = []
    with tempfile.TemporaryDirectory() as home:
        client = OblixClient(home=home, plugins=[ScriptedPlugin()])
        await client.hook_model("scripted", "instant")
        await execute_times(client, await client.create_session(), 20)  # warm up
        bare = await execute_times(client, await client.create_session(), 300)

        monitor = ResourceMonitor()  # default intervals: 2 s and 30 s
        network = ConnectivityAgent(endpoints=[f"127.0.0.1:{port}"])
        client.hook_agent(monitor)
        client.hook_agent(network)
        await anyio.sleep(1.0)
        checks = time_calls(client.agent_checks, 20_000)
        with_agents = await execute_times(client, await client.create_session(), 300)
        monitor_round = time_calls(monitor.sample, 5)
        network_round = time_calls(network.sample, 20)
        await client.shutdown()
    rows.append(("agent_checks() on the request path (2 agents)", median_ms(checks), p99_ms(checks), "-"))
    rows.append(
        ("ResourceMonitor.sample() (agent thread)", median_ms(monitor_round), p99_ms(monitor_round), "-")
    )
    rows.append(
        ("ConnectivityAgent.sample() (agent thread)", median_ms(network_round), p99_ms(network_round), "-")
    )
    rows.append(("execute, instant backend, no agents", median_ms(bare), p99_ms(bare), "1.000"))
    ratio = median_ms(with_agents) / median_ms(bare)
    rows.append(
        ("execute, instant backend, 2 agents", median_ms(with_agents), p99_ms(with_agents), f"{ratio:.3f}")
    )
    print_table("Agents on the request path (ms)", ["measurement", "median ms", "p99 ms", "ratio"], rows)


if __name__ == "__main__":
    anyio.run(main)
