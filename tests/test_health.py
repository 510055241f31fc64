"""Model health: cooldown rules, hysteresis of background checks, persistence and sharing.

Health checks run against :class:`tests.openai_loopback.LoopbackOpenAI` servers through
the real OpenAI backend's ``GET /models`` check; Redis sharing uses a real
``redis-server``.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix_core.models.backend import ModelBackend
from oblix_core.models.health import HEALTH_FILE, CircuitBreaker, FileHealthStore, HealthStore, ModelHealth
from oblix_openai import OpenAIBackend
from oblix_redis.health import RedisHealthStore
from tests import redis_servers
from tests.openai_loopback import LoopbackOpenAI
from tests.support.waiting import wait_until

redis_server = redis_servers.redis_server


class InProcess(ModelBackend):
    """A backend with no endpoint (like llama.cpp): no health check, never persisted."""

    model_type = "inprocess"


@pytest.fixture
def server() -> Iterator[LoopbackOpenAI]:
    srv = LoopbackOpenAI().start()
    yield srv
    srv.stop()


def breaker_for(
    store: HealthStore | None, *models: ModelBackend, cooldown: float = 30, **kw: float
) -> CircuitBreaker:
    breaker = CircuitBreaker(3, cooldown, store, **kw)  # type: ignore[arg-type]
    breaker.watch(models)
    return breaker


def test_threshold_and_at_once() -> None:
    model = InProcess("m")
    breaker = breaker_for(None, model)
    breaker.record_failure("inprocess:m")
    breaker.record_failure("inprocess:m")
    assert breaker.available("inprocess:m")  # two failures: under the threshold of 3
    breaker.record_failure("inprocess:m")  # the third in a row
    assert not breaker.available("inprocess:m")
    breaker.reset("inprocess:m")
    breaker.record_failure("inprocess:m", at_once=True, error="refused")
    assert not breaker.available("inprocess:m")
    assert breaker.describe("inprocess:m")["reason"] == "refused"  # type: ignore[index]


def test_a_model_without_health_check_returns_after_the_cooldown() -> None:
    breaker = breaker_for(None, InProcess("m"), cooldown=0.2)
    breaker.record_failure("inprocess:m", at_once=True)
    assert not breaker.available("inprocess:m")
    assert "cooldown" in breaker.describe("inprocess:m")["returns"]  # type: ignore[index]
    time.sleep(0.25)
    assert breaker.available("inprocess:m")


def test_cooldown_zero_turns_cooldowns_off() -> None:
    breaker = breaker_for(None, InProcess("m"), cooldown=0)
    breaker.record_failure("inprocess:m", at_once=True)
    assert breaker.available("inprocess:m") and breaker.cooling_down() == {}


def test_only_consecutive_passing_checks_return_a_model(server: LoopbackOpenAI) -> None:
    model = OpenAIBackend("m", endpoint=server.url)
    server.models_script = [200, 200, 500, 200, 429, 200, 200]  # then 200s
    breaker = breaker_for(None, model, cooldown=0.01, probe_interval=0.05, recovery_checks=3)
    breaker.record_failure("openai:m", at_once=True, error="boom")
    assert wait_until(lambda: server.models_requests >= 5)
    assert not breaker.available("openai:m")  # two passes, a failure, a pass, a 429: still out
    assert wait_until(lambda: breaker.available("openai:m"))
    assert server.models_requests == 8 and server.chat_requests == 0  # 3 passes after the 429
    assert breaker.health("openai:m").cooling is False  # type: ignore[union-attr]


def test_a_dead_endpoint_stays_out(server: LoopbackOpenAI) -> None:
    model = OpenAIBackend("m", endpoint=server.url)
    server.stop()
    breaker = breaker_for(None, model, probe_interval=0.05)
    breaker.record_failure("openai:m", at_once=True)
    assert wait_until(lambda: "failed" in ((breaker.describe("openai:m") or {}).get("last_check") or ""))
    time.sleep(0.3)
    assert not breaker.available("openai:m")
    assert "connection refused" in breaker.describe("openai:m")["last_check"]  # type: ignore[index]


def test_health_is_persisted_for_endpoints_only(tmp_path: Path, server: LoopbackOpenAI) -> None:
    store = FileHealthStore(tmp_path / HEALTH_FILE)
    remote, local = OpenAIBackend("m", endpoint=server.url), InProcess("m")
    first = breaker_for(store, remote, local)
    first.record_failure("openai:m", at_once=True, error="refused")
    first.record_failure("inprocess:m", at_once=True)
    assert first.flush()
    saved = json.loads((tmp_path / HEALTH_FILE).read_text())
    assert list(saved) == [f"openai:m|{server.url}"]
    second = breaker_for(store, OpenAIBackend("m", endpoint=server.url), InProcess("m"))
    second.sync()
    assert not second.available("openai:m") and second.available("inprocess:m")
    elsewhere = breaker_for(store, OpenAIBackend("m", endpoint="http://127.0.0.1:9/v1"))
    elsewhere.sync()  # same model id, another endpoint: another model
    assert elsewhere.available("openai:m")


def test_a_corrupt_health_file_is_ignored(tmp_path: Path, server: LoopbackOpenAI) -> None:
    (tmp_path / HEALTH_FILE).write_text("{not json")
    breaker = breaker_for(FileHealthStore(tmp_path / HEALTH_FILE), OpenAIBackend("m", endpoint=server.url))
    breaker.sync()
    breaker.record_failure("openai:m", at_once=True)
    assert breaker.flush()
    assert f"openai:m|{server.url}" in json.loads((tmp_path / HEALTH_FILE).read_text())


def _writer(path: str, worker: int) -> None:
    store = FileHealthStore(Path(path))
    for i in range(40):
        store.save(f"m{worker}-{i}|e", ModelHealth("e", failures=i).to_dict())


def test_processes_writing_one_health_file_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(tmp_path / HEALTH_FILE), w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    saved = FileHealthStore(tmp_path / HEALTH_FILE).load()
    assert len(saved) == 160 and saved["m3-39|e"]["failures"] == 39


def test_redis_shares_cooldowns_between_instances(
    redis_server: redis_servers.RedisServer, server: LoopbackOpenAI
) -> None:
    prefix = f"t{time.monotonic_ns()}:"
    host_a = breaker_for(
        RedisHealthStore(redis_server.client(), prefix), OpenAIBackend("m", endpoint=server.url)
    )
    host_b = breaker_for(
        RedisHealthStore(redis_server.client(), prefix), OpenAIBackend("m", endpoint=server.url)
    )
    host_a.record_failure("openai:m", at_once=True, error="HTTP 503")
    assert host_a.flush()
    host_b.sync()
    assert not host_b.available("openai:m")
    assert host_b.describe("openai:m")["reason"] == "HTTP 503"  # type: ignore[index]
    host_a.record_success("openai:m")  # a real answer on host A
    assert host_a.flush()
    host_b.sync()
    assert host_b.available("openai:m")


def test_the_shared_file_is_read_again_only_when_another_writer_changed_it(
    tmp_path: Path, server: LoopbackOpenAI
) -> None:
    """Requests ask :meth:`CircuitBreaker.stale` (a ``stat``) before paying for a read; a file
    changed within the last seconds is read every time (a coarse clock could repeat its stamp)."""
    import os

    path = tmp_path / HEALTH_FILE

    def settled() -> None:  # as if the last write were a minute old
        moment = time.time_ns() - 60 * 10**9
        os.utime(path, ns=(moment, moment))

    host_a = breaker_for(FileHealthStore(path), OpenAIBackend("m", endpoint=server.url))
    host_b = breaker_for(FileHealthStore(path), OpenAIBackend("m", endpoint=server.url))
    assert host_b.stale()  # nothing read yet
    host_b.sync()
    assert not host_b.stale()  # no file yet, still none
    host_a.record_failure("openai:m", at_once=True, error="HTTP 503")
    assert host_a.flush()
    assert host_b.stale()
    host_b.sync()
    assert host_b.stale() and not host_b.available("openai:m")  # just written: racy
    settled()
    host_b.sync()
    assert not host_b.stale()
    host_b.watch([OpenAIBackend("m", endpoint=server.url), OpenAIBackend("n", endpoint=server.url)])
    assert host_b.stale()  # another model: its shared record was never read
    host_a.record_success("openai:m")
    assert host_a.flush()
    settled()
    host_b.sync()
    assert host_b.available("openai:m") and not host_b.stale()


def test_a_store_that_cannot_tell_is_read_every_time(
    redis_server: redis_servers.RedisServer, server: LoopbackOpenAI
) -> None:
    breaker = breaker_for(
        RedisHealthStore(redis_server.client(), f"t{time.monotonic_ns()}:"),
        OpenAIBackend("m", endpoint=server.url),
    )
    breaker.sync()
    assert breaker.stale()
