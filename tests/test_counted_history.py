"""The warm history keeps its messages' token counts as a session grows (CountedHistory):
a request counts only the messages new since the last, and its fit is the fit of the
messages as they are — also when the history holds system messages, after the warm tail
dropped old messages, and when middleware edited the messages in place."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest

from oblix import OblixClient
from oblix_core.errors import NoModelAvailableError
from oblix_core.models.backend import ChatMessage
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request import history as history_module
from oblix_core.request.context import Request
from oblix_core.request.history import CountedHistory, fit_to_window, session_messages
from oblix_core.sessions.records import SessionRecord
from oblix_core.testing import ScriptedPlugin
from oblix_core.testing.scripted import ScriptedBackend


class Tokenized(ScriptedBackend):
    """A model with a tokenizer of its own (counts cached per message by the core)."""

    @property
    def tokenizer_key(self) -> str:
        return "tokenized"

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1


def _chat(rng: random.Random, count: int, system_every: int = 0) -> list[ChatMessage]:
    roles = ["user", "assistant"]
    return [
        ChatMessage(
            "system" if system_every and i % system_every == system_every - 1 else roles[i % 2],
            " ".join(f"w{rng.randrange(50)}" for _ in range(rng.randrange(1, 30))),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize(
    "model", [ScriptedBackend("m", context_window=256), Tokenized("t", context_window=256)]
)
@pytest.mark.parametrize("system_every", [0, 7])
def test_a_fit_from_the_counted_history_is_the_fit_of_the_messages(
    model: ScriptedBackend, system_every: int
) -> None:
    rng = random.Random(system_every)
    counted = CountedHistory(_chat(rng, 5, system_every))
    for turn in range(30):
        counted = counted.extended(_chat(rng, 2, system_every))
        if turn % 9 == 8:
            counted = counted.without_first(3)
        session = SessionRecord("s", context={"topic": "tests"} if turn % 2 else {})
        messages = session_messages(session, f"prompt {turn}", "be brief" if turn % 3 else None, counted)
        start = len(messages) - 1 - len(counted)
        for max_tokens in (None, 16, 120):
            plain = fit_to_window(messages, model, max_tokens)
            hinted = fit_to_window(messages, model, max_tokens, history=(start, counted))
            assert hinted == plain and hinted.sent_tokens == plain.sent_tokens


@pytest.fixture
def counted_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each call of the core's per-message counting was given."""
    lengths: list[int] = []
    costs = history_module._costs

    def spy(model: Any, history: Sequence[ChatMessage], key: Hashable | None) -> Sequence[int]:
        lengths.append(len(history))
        return costs(model, history, key)

    monkeypatch.setattr(history_module, "_costs", spy)
    return lengths


def test_a_growing_history_counts_only_its_new_messages(counted_lengths: list[int]) -> None:
    model, counted = Tokenized("t"), CountedHistory(())
    for turn in range(20):
        counted = counted.extended([ChatMessage("user", f"q{turn}"), ChatMessage("assistant", f"a{turn}")])
        messages = [*counted, ChatMessage("user", "next")]
        fit_to_window(messages, model, None, history=(0, counted))
    assert counted_lengths == [2] * 20  # the whole history (2..40 messages) was never counted again


@pytest.mark.anyio
async def test_sessions_of_a_client_count_each_message_once(
    home: Path, scripted: ScriptedPlugin, counted_lengths: list[int]
) -> None:
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local")
        session_id = await client.create_session(title="t")
        for turn in range(6):
            result = await client.execute(f"turn {turn}", session_id=session_id, stream=False)
            context = result["routing_decision"]["models"][0]["context"]
            assert context["history_messages"] == context["history_sent"] == 2 * turn
    assert counted_lengths == [2] * 5  # each turn counted the exchange before it, nothing more


class EditsInPlace:
    """Middleware that drops the history from ``request.messages`` in place (the list kept)."""

    @hookimpl
    def oblix_request_start(self, request: Request) -> None:
        assert isinstance(request.messages, list)
        request.messages[:] = [request.messages[-1]]


@pytest.mark.anyio
async def test_messages_edited_in_place_by_middleware_are_fitted_as_edited(home: Path) -> None:
    scripted = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[scripted, EditsInPlace()]) as client:
        await client.hook_model("scripted", "local")
        session_id = await client.create_session(title="t")
        for turn in range(3):
            result = await client.execute(f"turn {turn}", session_id=session_id, stream=False)
            context = result["routing_decision"]["models"][0]["context"]
            assert context["history_messages"] == context["history_sent"] == 0
            assert [m.content for m in scripted.calls["local"][-1].messages] == [f"turn {turn}"]


@pytest.mark.anyio
async def test_a_count_method_set_on_one_model_instance_is_what_its_fit_counts(
    home: Path, scripted: ScriptedPlugin
) -> None:
    """A model whose ``count_tokens`` is replaced on the instance (a wrapper, a test) is not
    counted with the 4-characters estimate that other models of its class share."""
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local")
        model = client.engine.models["scripted:local"]
        assert model.tokenizer_key is not None  # the estimate's key: its counts are cached
        model.count_tokens = lambda text: 100 * len(text.split())  # type: ignore[method-assign]
        assert model.tokenizer_key is None
        session_id = await client.create_session(title="t")
        await client.execute("one two", session_id=session_id, stream=False)
        result = await client.execute("three", session_id=session_id, stream=False)
        context = result["routing_decision"]["models"][0]["context"]
        sent = scripted.calls["local"][-1].messages
        assert [m.content for m in sent] == ["one two", "echo: one two", "three"]
        answer = model.generation_defaults.get("max_tokens")
        reserve = history_module.answer_reserve(context["window"], answer)
        assert context["needed"] == 100 * 6 + 4 * 3 + reserve  # 6 words, 100 tokens each


class ShortAnswers(ScriptedBackend):
    """A test double that, like the packaged model's few-shot format, stops answers at 100 tokens."""

    @property
    def default_answer_tokens(self) -> int:
        return 100


class _ShortPlugin(ScriptedPlugin):
    @hookimpl
    def oblix_register_models(self, register: Any) -> None:
        super().oblix_register_models(register)
        register("short", type("Short", (ShortAnswers,), {"model_type": "short", "owner": self}))


@pytest.mark.anyio
async def test_a_model_that_answers_briefly_keeps_only_that_much_room_for_the_answer(home: Path) -> None:
    """A window of 1,000 and a prompt of ~800 tokens: a model bounding its answers at 100 takes
    it; one without a bound keeps the usual quarter of the window (250) free and cannot."""
    prompt = "x" * 3160  # 790 + 4 estimated tokens
    async with OblixClient(home=home, plugins=[_ShortPlugin()]) as client:
        await client.hook_model("short", "brief", context_window=1000)
        result = await client.execute(prompt, stream=False, store=False)
        assert result["routing_decision"]["models"][0]["context"]["needed"] == 794 + 100
        await client.hook_model("scripted", "plain", context_window=1000)
        with pytest.raises(NoModelAvailableError, match="scripted:plain"):
            await client.execute(prompt, stream=False, store=False, model="scripted:plain")
