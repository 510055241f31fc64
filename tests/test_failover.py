"""Failover the way users expect, through the real ``openai`` client against loopback servers.

The endpoints are :class:`tests.openai_loopback.LoopbackOpenAI` servers (they count
requests and can refuse, black-hole, 500 or recover). Where a "local model" is needed
for ordering only, the scripted backend (``oblix_core.testing``, a test double) stands
in for it; the llama-marked test uses the real packaged model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from oblix import ModelType, OblixClient
from oblix_core.models.health import ModelCoolingDownError
from oblix_core.request.execution import ExecutionSettings
from oblix_core.testing import ScriptedPlugin, Step
from tests.conftest import FAST
from tests.openai_loopback import LoopbackOpenAI

QUICK = {"first_byte_timeout": 0.5, "connect_timeout": 0.5, "timeout": 2}


@pytest.fixture
def servers() -> Iterator[Callable[..., LoopbackOpenAI]]:
    started: list[LoopbackOpenAI] = []

    def make(mode: str = "ok", **kwargs: Any) -> LoopbackOpenAI:
        server = LoopbackOpenAI(mode, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def _client(home: Path, scripted: ScriptedPlugin | None = None, **settings: Any) -> OblixClient:
    execution = ExecutionSettings(**({"backoff_initial": 0.001, "backoff_max": 0.002} | settings))
    return OblixClient(home=home, plugins=[scripted] if scripted else [], execution=execution)


def _entry(result: dict[str, Any], model_id: str) -> dict[str, Any]:
    return next(m for m in result["routing_decision"]["models"] if m["model_id"] == model_id)


@pytest.mark.anyio
async def test_refused_primary_cools_at_once_and_is_skipped(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    dead, backup = servers(), servers()
    dead.stop()  # the port now refuses connections
    client = await _client(home)
    await client.hook_model(ModelType.OPENAI, "primary", endpoint=dead.url, **QUICK)
    await client.hook_model(ModelType.OPENAI, "backup", endpoint=backup.url, **QUICK)
    first = await client.execute("hi", stream=False)
    attempts = first["routing_decision"]["attempts"]
    assert first["model_id"] == "openai:backup" and len(attempts) == 2  # refused: no retry
    assert "connection refused" in attempts[0]["error"]
    assert "openai:primary" in client.executor.breaker.cooling_down()
    second = await client.execute("again", stream=False)
    assert [a["model_id"] for a in second["routing_decision"]["attempts"]] == ["openai:backup"]
    skipped = _entry(second, "openai:primary")
    assert skipped["status"] == "skipped" and "cooling down" in skipped["why"]
    assert skipped["health"]["cooling"] and "connection refused" in skipped["health"]["reason"]
    await client.shutdown()


@pytest.mark.anyio
async def test_the_only_cloud_model_is_cooled_and_not_paid_for_again(
    home: Path, servers: Callable[..., LoopbackOpenAI], scripted: ScriptedPlugin
) -> None:
    broken = servers("500")
    client = await _client(home, scripted)
    client.engine.preference = "cloud-first"
    await client.hook_model(ModelType.OPENAI, "cloud", endpoint=broken.url, **QUICK)
    await client.hook_model("scripted", "local")
    first = await client.execute("hi", stream=False)
    assert first["model_id"] == "scripted:local" and broken.chat_requests == 3  # 1 try + 2 retries
    for _ in range(3):
        again = await client.execute("hi", stream=False)
        assert again["model_id"] == "scripted:local"
    assert broken.chat_requests == 3  # cooled down: never sent again
    assert _entry(again, "openai:cloud")["status"] == "skipped"
    await client.shutdown()


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "sent"), [("400", 1), ("429", 3), ("503", 3)])
async def test_only_retryable_statuses_are_retried(
    home: Path, servers: Callable[..., LoopbackOpenAI], scripted: ScriptedPlugin, status: str, sent: int
) -> None:
    server = servers(status)
    client = await _client(home, scripted)
    await client.hook_model(ModelType.OPENAI, "cloud", endpoint=server.url, **QUICK)
    await client.hook_model("scripted", "local")
    result = await client.execute("hi", stream=False, model="openai:cloud", fallback=True)
    assert result["model_id"] == "scripted:local" and server.chat_requests == sent
    await client.shutdown()


@pytest.mark.anyio
async def test_blackholed_primary_fails_over_within_the_first_byte_timeout(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    hole, backup = servers("blackhole"), servers()
    client = await _client(home)
    await client.hook_model(ModelType.OPENAI, "hole", endpoint=hole.url, **QUICK)
    await client.hook_model(ModelType.OPENAI, "backup", endpoint=backup.url, **QUICK)
    started = time.monotonic()
    result = await client.execute("hi", stream=False)
    assert result["model_id"] == "openai:backup" and hole.chat_requests == 1  # unreachable: no retry
    assert time.monotonic() - started < 5
    assert "timed out" in result["routing_decision"]["attempts"][0]["error"]
    assert "openai:hole" in client.executor.breaker.cooling_down()
    await client.shutdown()


@pytest.mark.anyio
async def test_hysteresis_one_passing_check_does_not_return_a_flapping_model(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    flaky, backup = servers("500"), servers()
    flaky.models_script = [200, 500, 200, 500]  # then 200s
    client = await _client(home, probe_interval=0.2, recovery_checks=2, max_retries=0)
    await client.hook_model(ModelType.OPENAI, "flaky", endpoint=flaky.url, **QUICK)
    await client.hook_model(ModelType.OPENAI, "backup", endpoint=backup.url, **QUICK)
    assert (await client.execute("hi", stream=False))["model_id"] == "openai:backup"
    breaker = client.executor.breaker
    flaky.mode = "ok"  # answers again, but its health checks still flap
    while flaky.models_requests < 4:
        assert not breaker.available("openai:flaky"), "returned after a single passing check"
        await anyio.sleep(0.05)
    deadline = time.monotonic() + 5
    while not breaker.available("openai:flaky"):
        assert time.monotonic() < deadline
        await anyio.sleep(0.05)
    assert flaky.models_requests >= 6 and flaky.chat_requests == 1  # checks spent no tokens
    assert (await client.execute("hi", stream=False))["model_id"] == "openai:flaky"
    await client.shutdown()


@pytest.mark.anyio
async def test_forced_model_cooling_down_fails_fast_unless_fallback(
    home: Path, servers: Callable[..., LoopbackOpenAI], scripted: ScriptedPlugin
) -> None:
    dead = servers()
    dead.stop()
    client = await _client(home, scripted)
    await client.hook_model(ModelType.OPENAI, "cloud", endpoint=dead.url, **QUICK)
    await client.hook_model("scripted", "local")
    await client.execute("cool it", stream=False, model="openai:cloud", fallback=True)
    started = time.monotonic()
    with pytest.raises(ModelCoolingDownError, match=r"openai:cloud is cooling down.*fallback=True"):
        await client.execute("hi", stream=False, model="openai:cloud")
    assert time.monotonic() - started < 0.5
    result = await client.execute("hi", stream=False, model="openai:cloud", fallback=True)
    assert result["model_id"] == "scripted:local"
    assert [a["model_id"] for a in result["routing_decision"]["attempts"]] == ["scripted:local"]
    await client.shutdown()


@pytest.mark.anyio
async def test_two_clients_share_cooldowns_through_oblix_home(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    broken, backup = servers("500"), servers()
    first = await _client(home)
    second = await _client(home)
    for client in (first, second):
        await client.hook_model(ModelType.OPENAI, "broken", endpoint=broken.url, **QUICK)
        await client.hook_model(ModelType.OPENAI, "backup", endpoint=backup.url, **QUICK)
    await first.execute("hi", stream=False)
    assert first.executor.breaker.flush()
    sent = broken.chat_requests
    result = await second.execute("hi", stream=False)
    assert result["model_id"] == "openai:backup" and broken.chat_requests == sent
    assert _entry(result, "openai:broken")["status"] == "skipped"
    for client in (first, second):
        await client.shutdown()


@pytest.mark.anyio
async def test_a_client_that_routed_before_sees_a_cooldown_set_since(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    """The shared health is read again only when it changed (its file's stamp), but always then."""
    broken, backup = servers("500"), servers()
    first, second = await _client(home), await _client(home)
    for client in (first, second):
        await client.hook_model(ModelType.OPENAI, "backup", endpoint=backup.url, **QUICK)
        await client.hook_model(ModelType.OPENAI, "broken", endpoint=broken.url, **QUICK)
    await second.execute("hi", stream=False, model="openai:backup")  # routed once: health read
    await first.execute("hi", stream=False, model="openai:broken", fallback=True)
    assert first.executor.breaker.flush()
    sent = broken.chat_requests
    result = await second.execute("hi", stream=False, model="openai:broken", fallback=True)
    assert result["model_id"] == "openai:backup" and broken.chat_requests == sent
    assert _entry(result, "openai:broken")["status"] == "skipped"
    for client in (first, second):
        await client.shutdown()


def _config(home: Path, *servers: tuple[str, LoopbackOpenAI]) -> None:
    lines = ["[agents]\nenabled = []\n[execution]\nbackoff_initial = 0.001\n"]
    for name, server in servers:
        lines.append(
            f'[[models]]\ntype = "openai"\nname = "{name}"\nendpoint = "{server.url}"\n'
            "first_byte_timeout = 0.5\nconnect_timeout = 0.5\n"
        )
    (home / "config.toml").write_text("\n".join(lines))


def _oblix(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OBLIX_HOME": str(home)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "oblix_core", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_second_process_skips_what_the_first_cooled(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    broken, backup = servers("500"), servers()
    _config(home, ("broken", broken), ("backup", backup))
    first = _oblix(home, "run", "--json", "hi")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["model_id"] == "openai:backup" and broken.chat_requests == 3
    second = _oblix(home, "run", "--json", "hi again")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["model_id"] == "openai:backup" and broken.chat_requests == 3  # not sent again
    assert _entry(result, "openai:broken")["status"] == "skipped"


def test_run_explain_prints_candidates_skips_and_attempts(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    dead, backup = servers(), servers()
    dead.stop()
    _config(home, ("dead", dead), ("backup", backup))
    out = _oblix(home, "run", "--explain", "hi")
    assert out.returncode == 0, out.stderr
    assert "Hello from loopback" in out.stdout
    assert "Candidates, in order:" in out.stderr and "1. openai:dead (cloud)" in out.stderr
    assert "openai:dead failed after" in out.stderr and "connection refused" in out.stderr
    assert "Answered by openai:backup." in out.stderr
    again = _oblix(home, "run", "--explain", "-m", "openai:dead", "hi")
    assert again.returncode != 0 and "cooling down" in again.stderr and "--fallback" in again.stderr
    fallback = _oblix(home, "run", "--explain", "-m", "openai:dead", "--fallback", "hi")
    assert fallback.returncode == 0, fallback.stderr
    assert "skipped: openai:dead (cloud)" in fallback.stderr and "cooling down" in fallback.stderr


# -- context windows -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_window_too_small_for_the_prompt_is_skipped_with_a_reason(
    home: Path, scripted: ScriptedPlugin
) -> None:
    client = OblixClient(home=home, plugins=[scripted], execution=FAST)
    await client.hook_model("scripted", "small", context_window=64)
    await client.hook_model("scripted", "big", context_window=4096)
    result = await client.execute("word " * 200, stream=False, max_tokens=32)
    assert result["model_id"] == "scripted:big" and len(scripted.calls["small"]) == 0
    small = _entry(result, "scripted:small")
    assert small["status"] == "skipped" and "context window" in small["why"]
    assert small["context"]["window"] == 64 and small["context"]["needed"] > 64
    await client.shutdown()


@pytest.mark.anyio
async def test_failing_over_to_a_smaller_window_trims_the_history_for_it(
    home: Path, scripted: ScriptedPlugin
) -> None:
    client = OblixClient(home=home, plugins=[scripted], execution=FAST)
    await client.hook_model("scripted", "big", context_window=8192)
    await client.hook_model("scripted", "small", context_window=256)
    scripted.scripts["big"] = [Step(fail="transient")] * 3
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(40)
    ]
    result = await client.execute("last question", stream=False, history=history, max_tokens=64)
    assert result["model_id"] == "scripted:small"
    big_got, small_got = scripted.calls["big"][-1], scripted.calls["small"][-1]
    assert len(big_got.messages) == 41  # the big window took everything
    small_model = next(m for m in client.models if m.model_id == "scripted:small")
    assert small_model.count_message_tokens(small_got.messages) + 64 <= 256
    assert 1 < len(small_got.messages) < 41 and small_got.messages[-1].content == "last question"
    fit = _entry(result, "scripted:small")["context"]
    assert not fit["fits"] and fit["history_sent"] == len(small_got.messages) - 1
    await client.shutdown()


# -- the model's own load ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_busy_local_model_sends_concurrent_requests_to_an_idle_one(
    home: Path, scripted: ScriptedPlugin
) -> None:
    client = OblixClient(home=home, plugins=[scripted], execution=FAST)
    await client.hook_model("scripted", "local")
    await client.hook_model("scripted", "cloud", local=False)
    scripted.scripts["local"] = [Step(("slow ",) * 10, delay=0.05)]
    results: dict[str, Any] = {}

    async def long() -> None:
        results["long"] = await client.execute("long one", stream=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(long)
        await anyio.sleep(0.1)  # the local model is now generating
        results["concurrent"] = await client.execute("meanwhile", stream=False)
    assert results["long"]["model_id"] == "scripted:local"
    concurrent = results["concurrent"]
    assert concurrent["model_id"] == "scripted:cloud"
    decision = concurrent["routing_decision"]
    assert decision["rule"] == "local-busy" and "scripted:local is busy" in decision["reason"]
    assert _entry(concurrent, "scripted:local")["load"]["busy"] is True
    idle = await client.execute("later", stream=False)
    assert idle["model_id"] == "scripted:local" and idle["routing_decision"]["rule"] == "preference"
    await client.shutdown()


@pytest.mark.anyio
async def test_chat_why_explains_the_last_prompt(
    home: Path, scripted: ScriptedPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    from oblix_core.terminal.chat import run_chat

    client = OblixClient(home=home, plugins=[scripted], execution=FAST)
    await client.hook_model("scripted", "a")
    await client.hook_model("scripted", "b")
    scripted.scripts["a"] = [Step(fail="permanent")]
    lines = iter(["/why", "hello", "/why", "/exit"])
    await run_chat(client, None, read_line=lambda _: next(lines))
    out = capsys.readouterr().out
    assert "No prompt routed yet" in out
    assert "Candidates, in order:" in out and "1. scripted:a (local)" in out
    assert "scripted:a failed after" in out and "scripted permanent failure" in out
    assert "Answered by scripted:b." in out
    await client.shutdown()


@pytest.mark.serial  # reads the machine's CPU use while llama.cpp generates: alone, not beside other workers
@pytest.mark.llama
@pytest.mark.anyio
async def test_the_packaged_model_busy_is_oblix_busy_not_machine_busy(
    home: Path, servers: Callable[..., LoopbackOpenAI]
) -> None:
    from oblix.agents import ResourceMonitor

    cloud = servers()
    patient = attrs.evolve(FAST, first_token_timeout=60, total_timeout=120)  # 300 tokens on a loaded CPU
    client = OblixClient(home=home, execution=patient)
    await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m")
    await client.hook_model(ModelType.OPENAI, "cloud", endpoint=cloud.url, **QUICK)
    monitor = ResourceMonitor(interval=60, smoothing=1)
    client.hook_agent(monitor)
    local = next(m for m in client.models if m.is_local)
    results: dict[str, Any] = {}

    async def long_answer() -> None:
        results["long"] = await client.execute(  # on the local model whatever a busy machine says
            "Count from 1 to 300, separated by commas: 1, 2, 3, 4,",
            stream=False,
            max_tokens=300,
            model=local.model_id,
            repeat_penalty=1.0,  # the packaged setup's penalties end a count after a few numbers
            frequency_penalty=0.0,  # (then the story ended before the second request on an idle machine)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_answer)
        while not local.busy and "long" not in results:
            await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(monitor.measure)  # start a span inside the generation
        await anyio.sleep(0.5)
        reading = await anyio.to_thread.run_sync(monitor.refresh)
        busy_local = local.busy
        results["meanwhile"] = await client.execute("meanwhile?", stream=False)
    assert busy_local, "the story ended before the second request; use a longer one"
    metrics = reading.metrics
    assert metrics["oblix_cpu_percent"] > 1  # llama.cpp's threads count as Oblix's own work
    assert metrics["other_cpu_percent"] == pytest.approx(
        max(0.0, metrics["cpu_percent"] - metrics["oblix_cpu_percent"]), abs=0.2
    )
    assert results["long"]["model_id"] == local.model_id
    meanwhile = results["meanwhile"]
    assert meanwhile["model_id"] == "openai:cloud"
    entry = _entry(meanwhile, local.model_id)
    assert entry["load"]["busy"] and entry["load"]["queue_depth"] == 1
    if reading.state == "AVAILABLE":  # on a machine that other programs leave alone
        assert meanwhile["routing_decision"]["rule"] == "local-busy"
    await client.shutdown()


@pytest.mark.anyio
async def test_the_plan_reserves_each_models_default_max_tokens_as_the_executor_sends_it(
    home: Path, scripted: ScriptedPlugin
) -> None:
    """A model's ``defaults`` max_tokens is its answer reserve in screening too: the history
    the decision reports is the history the model got (no second trim in the executor)."""
    client = OblixClient(home=home, plugins=[scripted], execution=FAST)
    await client.hook_model("scripted", "roomy", context_window=1024, defaults={"max_tokens": 600})
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 10} for i in range(60)
    ]
    result = await client.execute("last question", stream=False, history=history, store=False)
    got = scripted.calls["roomy"][-1]
    assert got.max_tokens == 600
    fit = _entry(result, "scripted:roomy")["context"]
    assert fit["history_sent"] == len(got.messages) - 1 and fit["needed"] > 1024
    model = next(m for m in client.models if m.model_id == "scripted:roomy")
    assert model.count_message_tokens(got.messages) + 600 <= 1024
    assert model.count_message_tokens(got.messages) + 600 > 1024 - 60  # the space was used
    await client.shutdown()
