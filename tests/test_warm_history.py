"""Warm history: a session's tail kept in memory between requests, refreshed from the store.

Another process is played by a second store object on the same folder (it shares no
memory with the client): its appends, metadata changes, deletes and re-creates must
show on the client's next request exactly as a cold read would show them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from oblix import OblixClient
from oblix_core.errors import SessionNotFoundError
from oblix_core.models.backend import ChatMessage
from oblix_core.request.history import (
    MAX_CACHED_COUNTS,
    estimated_tokens,
    fit_to_window,
    marks,
    recent_start,
    trim_to_window,
)
from oblix_core.request.warm import WarmHistory
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_core.testing import ScriptedPlugin
from oblix_file.store import FileSessionStore


def _sent(scripted: ScriptedPlugin, name: str = "local") -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in scripted.calls[name][-1].messages]


async def _cold(home: Path, session_id: str, prompt: str) -> list[tuple[str, str]]:
    """What a fresh client (nothing warm) sends for ``prompt``, with store=False."""
    scripted = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local", context_window=256)
        await client.execute(prompt, session_id=session_id, stream=False, store=False)
    return _sent(scripted)


@pytest.mark.anyio
async def test_another_writers_changes_show_on_the_next_request(home: Path, scripted: ScriptedPlugin) -> None:
    other = FileSessionStore(home / "sessions")
    record = SessionRecord(id=new_session_id(), messages=tuple(Message("user", f"m{i}") for i in range(300)))
    other.create(record)
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local", context_window=256)
        await client.hook_model("scripted", "cloud", local=False, context_window=256)
        await client.execute("first", session_id=record.id, stream=False, store=False)
        assert _sent(scripted) == await _cold(home, record.id, "first")
        other.append_messages(record.id, [Message("assistant", "from elsewhere")])
        await client.execute("second", session_id=record.id, stream=False)
        sent = _sent(scripted)
        assert sent[-2:] == [("assistant", "from elsewhere"), ("user", "second")]
        await client.execute("probe", session_id=record.id, stream=False, store=False)
        assert _sent(scripted) == await _cold(home, record.id, "probe")
        other.update_metadata(record.id, {"local_only": True})  # another process made it private
        result = await client.execute("third", session_id=record.id, stream=False, preference="cloud-first")
        assert result["model_id"] == "scripted:local"
        assert _sent(scripted)[-3:-1] == [("user", "second"), ("assistant", "echo: second")]
        other.delete(record.id)
        with pytest.raises(SessionNotFoundError):
            await client.execute("fourth", session_id=record.id, stream=False)
        other.create(SessionRecord(id=record.id, messages=(Message("user", "reborn"),)))
        await client.execute("fifth", session_id=record.id, stream=False)
        assert _sent(scripted) == [("user", "reborn"), ("user", "fifth")]
    other.close()


@pytest.mark.anyio
async def test_warm_and_cold_send_the_same_messages_as_a_session_grows(
    home: Path, scripted: ScriptedPlugin
) -> None:
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local", context_window=128)
        result = await client.execute("hello", stream=False)
        session_id = result["session_id"]
        for i in range(60):  # the tail outgrows the window and is cut back while warm
            await client.execute(f"turn {i} " + "x" * (i % 7), session_id=session_id, stream=False)
            warm = _sent(scripted)
        assert len(warm) < 60
        scripted_cold = ScriptedPlugin()
        async with OblixClient(home=home, plugins=[scripted_cold]) as cold:
            await cold.hook_model("scripted", "local", context_window=128)
            await cold.execute("probe", session_id=session_id, stream=False, store=False)
        await client.execute("probe", session_id=session_id, stream=False, store=False)
        assert _sent(scripted) == _sent(scripted_cold)


def test_the_warm_history_is_bounded_and_falls_back_for_stores_that_cannot_tell(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path)
    warm = WarmHistory(capacity=2)
    ids = []
    for i in range(3):
        record = SessionRecord(id=new_session_id(), messages=(Message("user", f"s{i}"),))
        store.create(record)
        ids.append(record.id)
        session, chat = warm.read(store, record.id, 100)
        assert [m.content for m in session.messages] == [f"s{i}"] and chat == (ChatMessage("user", f"s{i}"),)
    assert list(warm._tails) == ids[1:]

    class Plain(FileSessionStore):
        def load_changes(self, session_id: str, cursor: object, max_messages: int) -> None:  # type: ignore[override]
            return None

    session, chat = WarmHistory().read(Plain(tmp_path), ids[0], 100)
    assert chat is None and [m.content for m in session.messages] == ["s0"]


def test_a_fit_counts_each_message_once_and_trims_as_before() -> None:
    from oblix_core.testing.scripted import ScriptedBackend

    class Counting(ScriptedBackend):
        counted = 0

        def count_message_tokens(self, messages):  # type: ignore[no-untyped-def]
            type(self).counted += len(messages)
            return super().count_message_tokens(messages)

        @property
        def tokenizer_key(self) -> str:
            return "counting"

    model = Counting("m", context_window=64)
    messages = [ChatMessage("system", "be brief"), *(ChatMessage("user", f"q{i} " * 3) for i in range(40))]
    fit = fit_to_window(messages, model, None)
    assert fit.messages == trim_to_window(messages, model, None) and fit.history_sent < fit.history_messages
    assert fit.sent_tokens == model.count_message_tokens(fit.messages)
    Counting.counted = 0
    fit_to_window(messages, model, None)
    assert Counting.counted == 2  # the system message and the prompt; history came from the cache
    assert MAX_CACHED_COUNTS > 1000


@pytest.mark.anyio
async def test_a_store_that_never_blocks_is_called_on_the_event_loop(
    home: Path, scripted: ScriptedPlugin
) -> None:
    import threading

    threads: list[int] = []

    class Quick(FileSessionStore):  # pretends it never blocks, and notes where it is called
        blocking = False

        def load_changes(self, session_id: str, cursor: object, max_messages: int):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            return super().load_changes(session_id, cursor, max_messages)

        def append_messages(self, session_id, messages, *, idempotency_key=None):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            super().append_messages(session_id, messages, idempotency_key=idempotency_key)

    store = Quick(home / "quick")
    record = SessionRecord(id=new_session_id())
    store.create(record)
    async with OblixClient(home=home, session_store=store, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local")
        result = await client.execute("hi", session_id=record.id, stream=False)
        # the usage ledger is written behind the request path: no worker-thread hop at all
        assert threads == [threading.get_ident()] * 2
        assert client.usage(since="1d")["total"]["requests"] == 1
    assert [m.content for m in store.load(record.id).messages] == ["hi", result["response"]]


@pytest.mark.anyio
async def test_a_long_warm_history_is_prepared_on_the_loop_a_cold_one_off_it(
    home: Path, scripted: ScriptedPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm history is chat messages already: however long, it is not sent to a worker thread
    to be put after the system messages (a hop costs more than extending a list: 214 µs against
    92 per call at 450 messages). A store that cannot tell changes is read cold, each message
    made anew: past LONG_HISTORY messages that runs in a worker thread, off the event loop."""
    import anyio.to_thread

    from oblix_core.request.conversation import LONG_HISTORY, ResponseStream

    moved: list[Any] = []
    original = anyio.to_thread.run_sync

    async def spy(func: Any, *args: Any, **kwargs: Any) -> Any:
        moved.append(getattr(func, "__func__", func))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)

    class Quick(FileSessionStore):
        blocking = False  # on the loop: only the request path's own hops are counted

    class QuickCold(_ReadWhole):
        blocking = False

    for store, hops in ((Quick(home / "warm"), 0), (QuickCold(home / "cold"), 1)):
        messages = tuple(Message("user", f"m{i}") for i in range(600))
        record = SessionRecord(id=new_session_id(), messages=messages)
        store.create(record)
        async with OblixClient(home=home, session_store=store, plugins=[scripted]) as client:
            await client.hook_model("scripted", "local", context_window=8192)
            for turn in range(2):
                moved.clear()
                await client.execute(f"turn {turn}", session_id=record.id, stream=False)
                assert len(scripted.calls["local"][-1].messages) > LONG_HISTORY
                assert moved.count(ResponseStream._apply_session) == hops, (store, moved)


class _ReadWhole(FileSessionStore):
    """A file store that cannot tell changes (a third-party store without ``load_changes``)."""

    def load_changes(self, session_id: str, cursor: object, max_messages: int) -> None:  # type: ignore[override]
        return None


async def _probe(home: Path, session_id: str, prompt: str, store: FileSessionStore | None = None) -> Any:
    """What a fresh client sends for ``prompt`` and how it explains the fit (store=False)."""
    scripted = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[scripted], session_store=store) as client:
        await client.hook_model("scripted", "local", context_window=256)
        result = await client.execute(prompt, session_id=session_id, stream=False, store=False)
    return _sent(scripted), result["routing_decision"]["models"][0]["context"]


@pytest.mark.anyio
async def test_stored_system_messages_are_sent_alike_however_far_back_a_read_reached(
    home: Path, scripted: ScriptedPlugin
) -> None:
    """A session with system messages stored among its turns (kept whatever their place): a
    warm client, a fresh one and one whose store is read whole send the same messages, since
    each uses the shortest recent history that covers the budget, not all a read happened to hold."""
    rng = random.Random(5)

    def message(i: int) -> Message:
        role = "system" if i % 9 == 4 else ("user", "assistant")[i % 2]
        return Message(role, f"{role} {i} " + "w " * rng.randrange(1, 30))

    other = FileSessionStore(home / "sessions")
    session_id = new_session_id()
    other.create(SessionRecord(id=session_id, messages=tuple(message(i) for i in range(120))))
    async with OblixClient(home=home, plugins=[scripted]) as client:
        await client.hook_model("scripted", "local", context_window=256)
        for turn in range(18):
            if turn % 4 == 1:
                other.append_messages(session_id, [message(200 + turn), Message("system", f"note {turn}")])
            await client.execute(f"turn {turn} " + "z " * (turn % 5), session_id=session_id, stream=False)
            if turn % 3 != 2:
                continue
            result = await client.execute("probe", session_id=session_id, stream=False, store=False)
            warm = _sent(scripted), result["routing_decision"]["models"][0]["context"]
            assert any(role == "system" for role, _ in warm[0][:-1])
            assert await _probe(home, session_id, "probe") == warm
            assert await _probe(home, session_id, "probe", _ReadWhole(home / "sessions")) == warm
    other.close()


def test_the_recent_history_starts_where_the_budget_is_covered() -> None:
    rng = random.Random(3)
    for _ in range(200):
        messages = [Message("user", "x" * rng.randrange(0, 80)) for _ in range(rng.randrange(1, 40))]
        wanted = rng.uniform(0, 500)
        start = recent_start(marks(messages, rng.randrange(0, 1000)), wanted)
        assert start == 0 or estimated_tokens(messages[start:]) >= wanted  # covered...
        assert start == len(messages) - 1 or estimated_tokens(messages[start + 1 :]) < wanted  # ...shortest
