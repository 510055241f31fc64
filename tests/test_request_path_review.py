"""Red-team review of the request path's speed changes (issue 32): promises the fast paths
must keep. The scripted backend (``oblix_core.testing.ScriptedPlugin``) and the small
backends below are test doubles (they answer from a script, not a model); stores, the
health file, the executor and the ledger are the real ones."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix import OblixClient
from oblix_core.errors import ConfigError
from oblix_core.models.backend import ChatMessage, GenerationRequest, ModelBackend, StreamChunk, Usage
from oblix_core.models.health import CircuitBreaker, FileHealthStore, ModelHealth
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request import routing
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.testing import ScriptedPlugin, Step
from oblix_core.testing.scripted import ScriptedBackend
from oblix_file.store import FileSessionStore
from tests.conftest import FAST

# -- the breaker's lock-free watch() -----------------------------------------------------


class _GatedDescribe(ScriptedBackend):
    """A test double whose describe() (read by watch() for the endpoint) waits, in the thread
    named ``slow``, until released: it holds that thread inside watch()."""

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__(model_name, **kwargs)
        self.entered, self.release = threading.Event(), threading.Event()

    def describe(self) -> dict[str, Any]:
        if threading.current_thread().name == "slow":
            self.entered.set()
            self.release.wait(5)
        return super().describe()


def test_a_watch_racing_another_still_reads_the_shared_health(tmp_path: Path) -> None:
    """Two requests watch the same new models at once (two threads on one client): the one
    that returns early must not route before the models' endpoints are known, or it skips
    the shared health file and sends to a model another process found cooling."""
    store = FileHealthStore(tmp_path / "health.json")
    now = time.time()
    cooling = ModelHealth("http://127.0.0.1:9", 0, now, now + 600, "down elsewhere", updated_at=now)
    store.save("scripted:remote|http://127.0.0.1:9", cooling.to_dict())
    model = _GatedDescribe("remote", endpoint="http://127.0.0.1:9", local=False)
    breaker = CircuitBreaker(3, 60.0, store)
    seen: dict[str, bool] = {}

    def request() -> None:  # what Executor.watch does before each routing, then screening
        breaker.watch([model])
        if breaker.shares_health and breaker.stale():
            breaker.sync()
        seen["available"] = breaker.available(model.model_id)

    slow = threading.Thread(target=breaker.watch, args=([model],), name="slow")
    slow.start()
    assert model.entered.wait(5)
    other = threading.Thread(target=request)
    other.start()
    other.join(0.2)  # HEAD: it has answered already, without the shared record
    model.release.set()
    slow.join(5)
    other.join(5)
    assert seen == {"available": False}


# -- usage records ---------------------------------------------------------------------


class _Count(int):
    """A token count of an int subclass (``token_count`` accepts any non-bool int)."""


class _Reporting(ModelBackend):
    """A test double: answers one fixed text and reports the usage it is given."""

    model_type = "reporting"
    end_is_complete = False
    usage = Usage(5, 3, None)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk("hello there")
        yield StreamChunk(usage=type(self).usage, finish_reason="stop")


class _ReportingPlugin:
    @hookimpl
    def oblix_register_models(self, register: Callable[[str, type[ModelBackend]], None]) -> None:
        register("reporting", _Reporting)


@pytest.mark.anyio
@pytest.mark.parametrize("usage", [Usage(_Count(5), 3, 1), Usage(5, _Count(3), None)])
async def test_valid_counts_are_not_recorded_as_estimated(home: Path, usage: Usage) -> None:
    """Counts ``token_count`` accepts are the model's own: the ledger record must say so, as
    the result's metrics do (the fast check ``absent_or_valid`` takes only exact ints)."""
    _Reporting.usage = usage
    async with OblixClient(home=home, plugins=[_ReportingPlugin()]) as client:
        await client.hook_model("reporting", "m", local=True)
        result = await client.execute("hi", stream=False)
        assert result["metrics"]["tokens_estimated"] is False
    async with OblixClient(home=home, plugins=[_ReportingPlugin()]) as client:
        (record,) = client.usage_ledger.recent(10)
    assert (record.input_tokens, record.output_tokens, record.error) == (5, 3, "")
    assert record.tokens_estimated is False


# -- the executor: prepare(), closing, in_flight ------------------------------------------


@pytest.mark.anyio
async def test_a_prepare_wrapped_on_the_base_class_still_runs(
    home: Path, scripted: ScriptedPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instrumentation that wraps ``ModelBackend.prepare`` (the no-op most backends inherit)
    is awaited as before: the executor's skip must compare with the original no-op, not
    with whatever the class attribute is now."""
    prepared: list[str] = []

    async def traced(self: ModelBackend) -> None:
        prepared.append(self.model_id)

    monkeypatch.setattr(ModelBackend, "prepare", traced)
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local")
        await client.execute("hi", stream=False)
    assert prepared == ["scripted:local"]


@pytest.mark.anyio
async def test_closing_or_cancelling_a_stream_reaches_the_model_and_gives_back_in_flight(
    home: Path, scripted: ScriptedPlugin
) -> None:
    async with OblixClient(home=home, plugins=[scripted], execution=FAST) as client:
        await client.hook_model("scripted", "a")
        (backend,) = client.models
        assert backend.streams_plainly  # the executor counts in_flight itself (_source/_closed)
        scripted.scripts["a"] = [Step(tuple("x" * 50), delay=0.01)]
        async with client.stream("hi") as response:
            async for _ in response:
                assert backend.in_flight == 1
                break
        with anyio.fail_after(2):
            await backend.cancelled.wait()  # type: ignore[attr-defined]
        assert backend.in_flight == 0

        backend.cancelled = anyio.Event()  # type: ignore[attr-defined]
        scripted.scripts["a"] = [Step(tuple("y" * 50), delay=0.05)]
        with anyio.move_on_after(0.12):
            await client.execute("cancelled", stream=False)
        assert backend.cancelled.is_set()  # type: ignore[attr-defined]
        assert backend.in_flight == 0

        scripted.scripts["a"] = [Step((), fail="transient"), Step(("whole",))]
        result = await client.execute("retried", stream=False)  # a try failed before any text
        assert result["response"] == "whole" and backend.in_flight == 0


# -- warm history with its counts ---------------------------------------------------------


class _Words(ScriptedBackend):
    """A test double with a tokenizer of its own (3 characters a token, more than the estimate
    the history reads by: the window, not the read, bounds what is sent): cached per message."""

    @property
    def tokenizer_key(self) -> Hashable:
        return "words"

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1


class _Uncached(ScriptedBackend):
    """A test double whose counts the core cannot cache (``tokenizer_key`` is ``None``)."""

    def count_message_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) // 3 + 5 for m in messages)


class _Loading(ScriptedBackend):
    """A test double that, like llama.cpp, counts with the estimate until prepare() loads its
    own tokenizer (a new key and other counts)."""

    loaded = False

    async def prepare(self) -> None:
        self.loaded = True

    @property
    def tokenizer_key(self) -> Hashable:
        return ("loaded", id(self)) if self.loaded else super().tokenizer_key

    def count_message_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if not self.loaded:
            return sum((len(m.content) + 3) // 4 + 4 for m in messages)
        return sum(3 * len(m.content.split()) + 2 for m in messages)


class _Kinds(ScriptedPlugin):
    @hookimpl
    def oblix_register_models(self, register: Callable[[str, type[ModelBackend]], None]) -> None:
        super().oblix_register_models(register)
        for name, base in (("words", _Words), ("uncached", _Uncached), ("loading", _Loading)):
            register(name, type(name, (base,), {"model_type": name, "owner": self}))


async def _hooked(client: OblixClient) -> None:
    await client.hook_model("words", "w", context_window=300)
    await client.hook_model("scripted", "s", context_window=200, local=False)
    await client.hook_model("uncached", "u", context_window=250, local=False)


def _decided(result: dict[str, Any]) -> dict[str, Any]:
    """Each model's place in the decision and its fit (the history used and sent)."""
    models = result["routing_decision"]["models"]
    return {m["model_id"]: (m["status"], m["position"], m["context"]) for m in models}


@pytest.mark.anyio
async def test_a_warm_session_decides_and_sends_as_a_cold_client_would(home: Path) -> None:
    """Another writer appends (long answers, tool messages) while the warm tail is trimmed:
    each probe's decision (every model's place and history sent) and the messages sent equal
    those of a fresh client reading the session cold (stored system messages: see
    tests/test_warm_history.py)."""
    other = FileSessionStore(home / "sessions")
    session_id = new_session_id()
    other.create(
        SessionRecord(
            id=session_id,
            messages=tuple(
                Message(("user", "assistant")[i % 2], f"old {i} " * (i % 13 + 1)) for i in range(150)
            ),
        )
    )
    warm = _Kinds()
    async with OblixClient(home=home, plugins=[warm]) as client:
        await _hooked(client)
        for turn in range(24):
            if turn % 5 == 1:
                other.append_messages(session_id, [Message("assistant", "elsewhere " * (turn + 3))])
            if turn % 6 == 4:
                other.append_messages(session_id, [Message("tool", f"tool output {turn}")])
            system = "be brief" if turn % 4 == 2 else None
            await client.execute(
                f"turn {turn} " + "y " * (turn % 9), session_id=session_id, system=system, stream=False
            )
            if turn % 6 != 5:
                continue
            probe: dict[str, Any] = {
                "session_id": session_id,
                "stream": False,
                "store": False,
                "max_tokens": 40,
            }
            seen = _decided(await client.execute("probe " * turn, **probe))
            sent = {name: warm.calls[name][-1].messages for name in ("w",)}
            cold = _Kinds()
            async with OblixClient(home=home, plugins=[cold]) as fresh:
                await _hooked(fresh)
                assert _decided(await fresh.execute("probe " * turn, **probe)) == seen
            assert {name: cold.calls[name][-1].messages for name in ("w",)} == sent
    other.close()


@pytest.mark.anyio
async def test_a_tokenizer_loaded_by_prepare_fits_the_warm_history_with_its_own_counts(home: Path) -> None:
    plugin = _Kinds()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("loading", "l", context_window=120)
        (model,) = client.models
        session_id = await client.create_session(title="t")
        for turn in range(12):
            result = await client.execute(
                f"turn {turn} " + "a b c " * (turn % 4), session_id=session_id, stream=False
            )
            sent = plugin.calls["l"][-1].messages
            assert result["metrics"]["input_tokens"] == model.count_message_tokens(sent) <= 120 - 30
            assert result["metrics"]["history_messages_sent"] == len(sent)
        assert len(sent) < 2 * 11 + 1  # the loaded tokenizer's counts trimmed the history


# -- route requests --------------------------------------------------------------------


def test_route_requests_are_one_per_combination_and_checked_each_time() -> None:
    first = routing.route_request("cloud-first", False, "", None, False)
    assert routing.route_request("cloud-first", False, "", None, False) is first
    other = routing.route_request("cloud-first", True, "requested", None, False)
    assert other is not first and (other.local_only, other.local_only_reason) == (True, "requested")
    assert routing.route_request("cloud-first", False, "", "scripted:a", True).model == "scripted:a"
    for _ in range(2):  # an invalid preference is never cached: refused each time
        with pytest.raises(ConfigError, match="Unknown routing preference"):
            routing.route_request("fastest", False, "", None, False)


@pytest.mark.anyio
async def test_concurrent_requests_on_a_warm_session_each_get_their_own_fit(home: Path) -> None:
    """Requests at once on one warm session share its counted history: each is fitted as its
    own messages would be fitted alone (the prompts differ in size, so the fits differ)."""
    from oblix_core.request.history import fit_to_window, session_messages

    plugin = _Kinds()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("words", "w", context_window=300)
        (model,) = client.models
        session_id = await client.create_session(title="t")
        for turn in range(15):
            await client.execute(f"turn {turn} " + "z " * (turn % 5 * 4), session_id=session_id, stream=False)
        stored = client.store.load(session_id)
        results: dict[str, dict[str, Any]] = {}

        async def ask(prompt: str) -> None:
            results[prompt] = await client.execute(
                prompt, session_id=session_id, stream=False, store=False, max_tokens=40
            )

        prompts = [f"p{i} " + "q " * (i * 25) for i in range(6)]
        async with anyio.create_task_group() as group:
            for prompt in prompts:
                group.start_soon(ask, prompt)
        sent = {call.messages[-1].content: call.messages for call in list(plugin.calls["w"])[-6:]}
        for prompt in prompts:
            expected = fit_to_window(session_messages(stored, prompt), model, 40)
            assert sent[prompt] == expected.messages
            assert results[prompt]["routing_decision"]["models"][0]["context"] == expected.describe()
        assert len({len(sent[p]) for p in prompts}) > 2  # the fits did differ
