"""The llama.cpp prompt-state cache, with the real library and the packaged Gemma 3 270M.

Every answer produced with the cache is compared token for token (greedy decoding)
with the answer of a second model instance that evaluates every prompt from scratch.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from benchmarks.llama_cache_bench import history as made_up_history
from oblix import OblixClient
from oblix_core.errors import ConfigError
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_llamacpp import LlamaCppBackend
from oblix_llamacpp.options import default_threads
from oblix_llamacpp.packaged import packaged_model_path
from oblix_llamacpp.state_cache import (
    MIN_SAVE_TOKENS,
    CacheUse,
    PromptStateCache,
    common_prefix,
    default_capacity,
)
from oblix_llamacpp.state_disk import SUFFIX

pytestmark = pytest.mark.llama

Messages = list[ChatMessage]


_runs = itertools.count()


def history(exchanges: int, tag: str) -> Messages:
    """A made-up conversation, about 59 tokens per exchange, never seen before by the model."""
    tag = f"{tag}{next(_runs)}"  # tests run under asyncio and trio: no state of the first run fits
    return made_up_history(exchanges, tag)


@pytest.fixture
def anyio_backend() -> str:
    """These tests are about llama.cpp's state, so one event loop suffices (the thread
    bridge is tested under both in test_llamacpp.py); the concurrency test runs under both."""
    return "asyncio"


def start(**options: Any) -> LlamaCppBackend:
    return anyio.run(functools.partial(astart, **options))


async def astart(**options: Any) -> LlamaCppBackend:
    backend = LlamaCppBackend("gemma-3-270m", n_ctx=4096, seed=7, **options)
    await backend.start()
    await backend.prepare()  # loaded now: the cache's counters exist from the start
    return backend


@pytest.fixture(scope="module")
def reference() -> Iterator[LlamaCppBackend]:
    """Answers every prompt from scratch (no saved states; its context is reset first)."""
    backend = start(kv_cache_bytes=0)
    yield backend
    anyio.run(backend.aclose)


@pytest.fixture(scope="module")
def cached() -> Iterator[LlamaCppBackend]:
    backend = start()
    yield backend
    anyio.run(backend.aclose)


async def answer(backend: LlamaCppBackend, messages: Messages, max_tokens: int = 12) -> tuple[str, dict]:
    """The answer text and the last chunk's ``prompt_cache`` report."""
    request = GenerationRequest(tuple(messages), temperature=0.0, max_tokens=max_tokens)
    chunks = [c async for c in backend.stream(request)]
    info = chunks[-1].info or {}
    return "".join(c.text for c in chunks), info.get("prompt_cache", {})


async def fresh(reference: LlamaCppBackend, messages: Messages, max_tokens: int = 12) -> str:
    reference._llama.reset()  # the worker is idle between requests: no prefix to reuse
    text, use = await answer(reference, messages, max_tokens)
    assert use["source"] == "none"
    return text


def turn(messages: Messages, text: str, question: str) -> Messages:
    return [*messages, ChatMessage("assistant", text), ChatMessage("user", question)]


@pytest.mark.anyio
async def test_interleaved_sessions_resume_from_saved_states(
    cached: LlamaCppBackend, reference: LlamaCppBackend
) -> None:
    sessions = {"A": [*history(10, "A"), ChatMessage("user", "Name a colour.")]}
    sessions["B"] = [*history(20, "B"), ChatMessage("user", "Name a fruit.")]
    before = cached.describe()["prompt_cache"]["hits"]
    for round_ in range(3):
        for name, messages in sessions.items():
            text, use = await answer(cached, messages)
            assert text == await fresh(reference, messages), (name, round_)
            if round_:  # the other session ran in between: only the saved state can help
                assert use["source"] == "ram" and use["hit"]
                assert use["tokens_evaluated"] < 80 and use["tokens_reused"] > 500
                assert use["restore_ms"] > 0
            sessions[name] = turn(messages, text, f"Round {round_}: and another one?")
    stats = cached.describe()["prompt_cache"]
    assert stats["hits"] - before == 4 and stats["bytes"] <= stats["capacity_bytes"]
    assert stats["states"] >= 2  # one per session: each new turn replaced its predecessor


@pytest.mark.anyio
async def test_an_identical_prompt_decodes_nothing_and_answers_the_same(
    cached: LlamaCppBackend, reference: LlamaCppBackend
) -> None:
    """A one-token answer leaves the context ending exactly at its prompt, with that prompt's
    logits: the same prompt again samples at once (what llama_cpp.server does), same answer."""
    messages = [*history(3, "same"), ChatMessage("user", "Yes or no?")]
    first, _ = await answer(cached, messages, max_tokens=1)
    again, use = await answer(cached, messages, max_tokens=1)
    assert use["source"] == "live" and use["tokens_evaluated"] == 0 and use["tokens_reused"] > 100
    assert first == again == await fresh(reference, messages, max_tokens=1)
    longer, use = await answer(cached, messages, max_tokens=12)  # still nothing to evaluate
    assert use["tokens_evaluated"] == 0 and longer == await fresh(reference, messages)
    text, use = await answer(cached, messages, max_tokens=12)  # its answer was decoded: evaluate again
    assert use["tokens_evaluated"] > 0 and text == longer


@pytest.mark.anyio
async def test_trimmed_history_is_not_resumed_from_a_stale_state(
    cached: LlamaCppBackend, reference: LlamaCppBackend
) -> None:
    messages = [*history(20, "T"), ChatMessage("user", "Name a tree.")]
    await answer(cached, messages)
    await answer(cached, [*history(3, "other"), ChatMessage("user", "Hi.")])
    trimmed = messages[4:]  # what trimming to a smaller window does: the start is gone
    text, use = await answer(cached, trimmed)
    assert text == await fresh(reference, trimmed)
    shared = common_prefix(prompt_tokens(cached, messages), prompt_tokens(cached, trimmed))
    assert not use["hit"] and use["tokens_reused"] <= shared  # at most the shared header (format's)


@pytest.mark.anyio
async def test_edited_last_message_never_reuses_a_stale_state(
    cached: LlamaCppBackend, reference: LlamaCppBackend
) -> None:
    messages = [*history(20, "E"), ChatMessage("user", "Name a bird that cannot fly.")]
    await answer(cached, messages)
    await answer(cached, [*history(3, "other"), ChatMessage("user", "Hi.")])
    edited = [*messages[:-1], ChatMessage("user", "Tell me about whales.")]
    text, use = await answer(cached, edited)
    assert text == await fresh(reference, edited)
    shared = common_prefix(prompt_tokens(cached, messages), prompt_tokens(cached, edited))
    assert use["tokens_reused"] <= shared  # never a state that does not fit the new prompt


def prompt_tokens(backend: LlamaCppBackend, messages: Messages) -> np.ndarray:
    prompt, _ = backend._plain(messages)  # the packaged model's format (fewshot)
    return np.array(backend._llama.tokenize(prompt.encode(), add_bos=True, special=True), dtype=np.intc)


def last_logits(llama: Any) -> np.ndarray:
    return np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).copy()


def grid_eval(llama: Any, tokens: np.ndarray, stop: int) -> None:
    """Evaluate ``tokens[:stop]`` from scratch in llama-cpp-python's 512-token batches."""
    llama.reset()
    for start in range(0, stop, 512):
        llama.eval(tokens[start : min(stop, start + 512)].tolist())


def test_sliding_window_cut_rule_matches_llama_cpp() -> None:
    """A context may be cut back only if it still holds the window the next token attends to.

    Gemma 3's sliding window is 512 tokens. A context evaluated from scratch holds every
    position, so cutting 16 tokens gives exactly the logits of a from-scratch evaluation;
    a restored state holds only the last window, so the same cut would change them (which
    is why the cache checks, and never cuts a restored state).
    """
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(packaged_model_path()), n_ctx=2048, verbose=False)
    try:
        cache = PromptStateCache(llama, 1 << 30)
        assert cache.n_swa == 512
        text = " ".join(f"Item {i}: the box holds {i * 7 % 31} coins." for i in range(120))
        tokens = np.array(llama.tokenize(text.encode(), add_bos=True)[:1200], dtype=np.intc)
        keep = 1184  # both 1200 and 1184 are multiples of 16: the same kernels run on every row
        grid_eval(llama, tokens, keep)
        llama.eval([int(tokens[keep])])  # one token, as after a cut
        want = last_logits(llama)

        def cut_and_step() -> np.ndarray:
            assert llama._ctx.kv_cache_seq_rm(-1, keep, -1)
            llama.n_tokens = keep
            llama.eval([int(tokens[keep])])
            return last_logits(llama)

        grid_eval(llama, tokens, 1200)
        assert cache._pos_min() == 0 and cache._can_keep(keep, 1200, cache._pos_min())
        cache._save(tokens, CacheUse())
        assert np.array_equal(cut_and_step(), want)  # bit for bit

        llama.reset()
        assert cache._restore("ram", next(iter(cache._states.values())), CacheUse()) == 1200
        assert cache._pos_min() == 1200 - 512  # only the window was saved
        assert not cache._can_keep(keep, 1200, cache._pos_min())
        assert float(np.max(np.abs(cut_and_step() - want))) > 0.01  # what the check prevents
    finally:
        llama.close()


@pytest.mark.anyio
async def test_eviction_keeps_answers_identical(reference: LlamaCppBackend) -> None:
    small = await astart(kv_cache_bytes=12_000_000)  # room for one ~600-token state, not two
    try:
        sessions = {"A": [*history(10, "A"), ChatMessage("user", "Name a colour.")]}
        sessions["B"] = [*history(11, "B"), ChatMessage("user", "Name a fruit.")]
        for _ in range(2):
            for name, messages in sessions.items():
                text, use = await answer(small, messages)
                assert text == await fresh(reference, messages)
                assert not use["hit"]  # the other session's state pushed this one out
                sessions[name] = turn(messages, text, "Another?")
        stats = small.describe()["prompt_cache"]
        assert stats["evictions"] >= 3 and stats["bytes"] <= 12_000_000 and stats["states"] == 1
    finally:
        await small.aclose()


@pytest.mark.anyio
async def test_a_corrupt_state_falls_back_to_a_full_evaluation(
    cached: LlamaCppBackend, reference: LlamaCppBackend, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [*history(12, "C"), ChatMessage("user", "Name a river.")]
    text, _ = await answer(cached, messages)
    await answer(cached, [*history(3, "other"), ChatMessage("user", "Hi.")])
    assert cached._cache is not None
    for state in cached._cache._states.values():
        state.data[:] = bytes(len(state.data))  # zeroed: llama.cpp rejects it
    following = turn(messages, text, "And a lake?")
    failures = cached.describe()["prompt_cache"]["restore_failures"]
    with caplog.at_level(logging.WARNING, logger="oblix_llamacpp.state_cache"):
        again, use = await answer(cached, following)
    assert again == await fresh(reference, following)
    assert use["source"] == "none"
    assert "could not restore" in caplog.text
    assert cached.describe()["prompt_cache"]["restore_failures"] == failures + 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_cancelled_and_concurrent_requests_leave_the_cache_consistent(
    cached: LlamaCppBackend, reference: LlamaCppBackend
) -> None:
    a = [*history(10, "X"), ChatMessage("user", "Write a long story about a dragon.")]
    b = [*history(12, "Y"), ChatMessage("user", "Write a long story about a ship.")]
    with anyio.move_on_after(1.0):  # cancelled somewhere during prompt evaluation or generation
        await answer(cached, a, max_tokens=300)
    results: dict[str, str] = {}

    async def one(name: str, messages: Messages) -> None:
        results[name] = (await answer(cached, messages, max_tokens=10))[0]

    async with anyio.create_task_group() as tg:  # queued on the one inference thread
        tg.start_soon(one, "a", a)
        tg.start_soon(one, "b", b)
    assert results["a"] == await fresh(reference, a, max_tokens=10)
    assert results["b"] == await fresh(reference, b, max_tokens=10)
    await answer(cached, b, max_tokens=10)  # whichever ran last, the model now holds b
    text, use = await answer(cached, a, max_tokens=10)
    assert use["hit"] and text == results["a"]  # a comes back from its saved state


@pytest.mark.anyio
async def test_disk_tier_serves_a_later_process(tmp_path: Path, reference: LlamaCppBackend) -> None:
    messages = [*history(10, "D"), ChatMessage("user", "Name a mountain.")]
    script = textwrap.dedent(
        f"""
        import anyio, json, sys
        from oblix_core.models.backend import ChatMessage, GenerationRequest
        from oblix_llamacpp import LlamaCppBackend
        messages = tuple(ChatMessage(**m) for m in json.loads(sys.argv[1]))
        async def main():
            backend = LlamaCppBackend("gemma-3-270m", n_ctx=4096, seed=7, kv_cache_dir={str(tmp_path)!r})
            await backend.start()
            request = GenerationRequest(messages, temperature=0.0, max_tokens=12)
            chunks = [c async for c in backend.stream(request)]
            await backend.aclose()
            print(json.dumps("".join(c.text for c in chunks)))
        anyio.run(main)
        """
    )
    import json

    payload = json.dumps([m.to_dict() for m in messages])
    done = subprocess.run(
        [sys.executable, "-c", script, payload], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout.strip().splitlines()[-1])
    files = list(tmp_path.rglob(f"*{SUFFIX}"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700

    later = await astart(kv_cache_dir=tmp_path)
    try:
        following = turn(messages, first, "And a valley?")
        text, use = await answer(later, following)
        assert use["source"] == "disk" and use["tokens_reused"] > 500
        assert text == await fresh(reference, following)
        assert len(list(tmp_path.rglob(f"*{SUFFIX}"))) == 1  # the new state replaced the one it extends
    finally:
        await later.aclose()


def _cut_short(content: bytes) -> bytes:
    return content[:-1000]  # e.g. by a full disk


def _list_header(content: bytes) -> bytes:
    """A crafted file: our magic, then a header that is valid JSON but not an object."""
    (size,) = struct.unpack("<Q", content[8:16])
    header = json.dumps([{"n_tokens": 1}]).encode()
    return content[:8] + struct.pack("<Q", len(header)) + header + content[16 + size :]


@pytest.mark.anyio
@pytest.mark.parametrize("damage", [_cut_short, _list_header])
async def test_a_damaged_disk_state_is_removed_and_ignored(
    tmp_path: Path, reference: LlamaCppBackend, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    messages = [*history(8, "F"), ChatMessage("user", "Name a planet.")]
    backend = await astart(kv_cache_dir=tmp_path)
    try:
        text, _ = await answer(backend, messages)
    finally:
        await backend.aclose()
    (saved,) = tmp_path.rglob(f"*{SUFFIX}")
    saved.write_bytes(damage(saved.read_bytes()))
    later = await astart(kv_cache_dir=tmp_path)
    try:
        following = turn(messages, text, "And a moon?")
        with caplog.at_level(logging.WARNING, logger="oblix_llamacpp.state_disk"):
            again, use = await answer(later, following)
        assert use["source"] == "none" and again == await fresh(reference, following)
        assert "ignoring and removing" in caplog.text and not saved.exists()
    finally:
        await later.aclose()


@pytest.mark.anyio
async def test_chat_template_path_is_cached_too(reference: LlamaCppBackend) -> None:
    chat = await astart(chat_format="gemma")
    plain_chat = await astart(chat_format="gemma", kv_cache_bytes=0)
    try:
        messages = [*history(10, "G"), ChatMessage("user", "Name a colour.")]
        text, _ = await answer(chat, messages)
        await answer(chat, [*history(3, "other"), ChatMessage("user", "Hi.")])
        following = turn(messages, text, "And another?")
        again, use = await answer(chat, following)
        plain_chat._llama.reset()
        assert use["hit"] and again == (await answer(plain_chat, following))[0]
    finally:
        await chat.aclose()
        await plain_chat.aclose()


@pytest.mark.anyio
async def test_result_metrics_report_the_cache(home: Path, cached: LlamaCppBackend) -> None:
    notes = " ".join(f"Note {i}: the {i}th shelf holds {i * 3} books." for i in range(30))
    async with OblixClient(home=home) as client:
        await client.hook_backend(cached)
        try:
            first_session = await client.create_session("Library")
            other_session = await client.create_session("Other")
            options = {"stream": False, "temperature": 0, "max_tokens": 8}
            first = await client.execute(
                f"{notes} Which shelf is first?", session_id=first_session, **options
            )
            assert first["metrics"]["prompt_cache"]["hit"] is False
            await client.execute("Name a colour.", session_id=other_session, **options)
            again = await client.execute("And the second?", session_id=first_session, **options)
            cache = again["metrics"]["prompt_cache"]
            assert cache["hit"] and cache["source"] == "ram" and cache["tokens_reused"] > 300
            assert cache["restore_ms"] > 0 and cache["tokens_evaluated"] < 60
        finally:
            await client.unhook_model(cached.model_id, release=False)  # the module fixture owns it


def test_options_are_checked_and_defaults_follow_the_machine() -> None:
    with pytest.raises(ConfigError, match="kv_cache_bytes"):
        LlamaCppBackend("gemma-3-270m", kv_cache_bytes=-1)
    with pytest.raises(ConfigError, match="kv_cache_disk_bytes"):
        LlamaCppBackend("gemma-3-270m", kv_cache_disk_bytes="1GB")
    with pytest.raises(ConfigError, match="kv_cache_dir"):
        LlamaCppBackend("gemma-3-270m", kv_cache_dir=123)
    with pytest.raises(ConfigError, match="is a file"):
        LlamaCppBackend("gemma-3-270m", kv_cache_dir=__file__)
    backend = LlamaCppBackend("gemma-3-270m")
    assert backend.kv_cache_bytes == default_capacity() <= 1 << 30
    assert backend.kv_cache_dir is None
    assert [default_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert LlamaCppBackend("gemma-3-270m", kv_cache_dir=True).kv_cache_dir.name == "llama-states"  # type: ignore[union-attr]
    assert MIN_SAVE_TOKENS < 600  # the sessions above are long enough to be saved
