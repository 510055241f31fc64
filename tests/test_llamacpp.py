"""The in-process llama.cpp backend with the real library and the packaged Gemma 3 270M model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from benchmarks.packaged_model_prompts import PIPED as README_START
from oblix import ModelType, OblixClient
from oblix_core.errors import ConfigError
from oblix_core.models.backend import ChatMessage, GenerationRequest
from oblix_core.testing import ModelBackendContract
from oblix_llamacpp import LlamaCppBackend
from oblix_llamacpp.packaged import packaged_model_path

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppBackend]:
    """One loaded packaged model for the module (loading takes about a second)."""
    backend = LlamaCppBackend("gemma-3-270m", n_ctx=2048, seed=7)
    anyio.run(backend.start)
    yield backend
    anyio.run(backend.aclose)


def ask(text: str, max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", text),), temperature=0.0, max_tokens=max_tokens)


class TestLlamaCppContract(ModelBackendContract):
    @pytest.fixture
    def backend(self, gemma: LlamaCppBackend) -> LlamaCppBackend:
        return gemma


def test_packaged_model_identity(gemma: LlamaCppBackend) -> None:
    assert gemma.model_id == "llama_cpp:gemma-3-270m"
    anyio.run(gemma.prepare)  # the format is chosen from the loaded model's metadata
    assert gemma.describe()["prompt_format"] == "fewshot"  # a gemma3 base model: no chat template
    import llama_cpp

    assert gemma.describe()["gpu_offload_supported"] is bool(llama_cpp.llama_supports_gpu_offload())
    assert packaged_model_path().stat().st_size > 200_000_000


def test_tokens_counted_with_the_model_tokenizer(gemma: LlamaCppBackend) -> None:
    text = "Oblix routes prompts between local and cloud models."
    assert gemma.count_tokens(text) == len(gemma._llama.tokenize(text.encode(), add_bos=False, special=True))
    assert gemma.count_tokens(text) != gemma.__class__.__mro__[1].count_tokens(gemma, text)


@pytest.mark.anyio
async def test_answers_sensibly_and_stops_at_the_turn(gemma: LlamaCppBackend) -> None:
    chunks = [c async for c in gemma.stream(ask("What is the capital of France?", 48))]
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    assert "Question:" not in text and "Answer:" not in text
    assert text == text.strip()  # no whitespace before the stop
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.output_tokens <= 48


@pytest.mark.anyio
async def test_concurrent_requests_are_queued_not_garbled(gemma: LlamaCppBackend) -> None:
    prompts = ["What is the capital of France?", "Name a colour.", "What is two plus two?"]
    alone = ["".join([c.text async for c in gemma.stream(ask(p))]) for p in prompts]
    together: dict[int, str] = {}

    async def one(i: int) -> None:
        together[i] = "".join([c.text async for c in gemma.stream(ask(prompts[i]))])

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert [together[i] for i in range(3)] == alone  # greedy decoding: identical answers


@pytest.mark.anyio
async def test_event_loop_keeps_running_during_generation(gemma: LlamaCppBackend) -> None:
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        tokens = [c async for c in gemma.stream(ask("Tell me a story about a dragon.", 40))]
        done.set()
    assert len(tokens) >= 3 and ticks >= len(tokens)  # the loop ran between tokens


@pytest.mark.anyio
async def test_closing_the_stream_stops_generation(gemma: LlamaCppBackend) -> None:
    async with aclosing(gemma.stream(ask("Count from one to one hundred.", 400))) as stream:
        async for chunk in stream:
            if chunk.text:
                break
    with anyio.fail_after(5):  # the worker lets go of the model within a token or so
        while gemma.busy:
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_cancelling_the_task_stops_generation(gemma: LlamaCppBackend) -> None:
    with anyio.move_on_after(0.3):
        async for _ in gemma.stream(ask("Write a long essay about the sea.", 400)):
            pass
    with anyio.fail_after(5):
        while gemma.busy:
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No GGUF file"):
        await LlamaCppBackend(str(tmp_path / "nope.gguf")).start()


@pytest.mark.anyio
async def test_end_to_end_session_with_history(home: Path, gemma: LlamaCppBackend) -> None:
    async with OblixClient(home=home) as client:
        await client.hook_backend(gemma)  # reuse the loaded model (hook_model would load it again)
        try:
            sid = await client.create_session("Geography")
            first = await client.execute(
                "What is the capital of France?", session_id=sid, stream=False, temperature=0, max_tokens=32
            )
            assert first["model_id"] == "llama_cpp:gemma-3-270m" and "Paris" in first["response"]
            assert first["metrics"]["tokens_estimated"] is False
            second = await client.execute(
                "And of Italy?", session_id=sid, stream=False, temperature=0, max_tokens=32
            )
            assert second["metrics"]["history_messages_sent"] == 3
            assert [m["role"] for m in client.load_session(sid)["messages"]] == ["user", "assistant"] * 2
        finally:
            await client.unhook_model(gemma.model_id, release=False)  # the module fixture owns it


@pytest.mark.anyio
async def test_hook_model_with_a_gguf_path(home: Path) -> None:
    async with OblixClient(home=home) as client:
        assert await client.hook_model(ModelType.LLAMA_CPP, str(packaged_model_path()), n_ctx=512) is True
        assert [m.model_id for m in client.models] == ["llama_cpp:gemma-3-270m-q4_k_m"]
        result = await client.execute("Say hi.", stream=False, max_tokens=8, temperature=0)
    assert result["response"].strip()


@pytest.mark.anyio
async def test_adaptive_threads_reach_the_llama_context(gemma: LlamaCppBackend) -> None:
    """By default the thread count is chosen per request and set on llama.cpp's context."""
    import llama_cpp

    from oblix_llamacpp.threads import physical_cores

    assert gemma.describe()["threads"]["mode"] == "adaptive"
    await anyio.sleep(0.3)  # a measurable window since the last request
    text = "".join([c.text async for c in gemma.stream(ask("Name a colour.", 8))])
    assert text
    used = gemma.n_threads
    assert 1 <= used <= physical_cores()
    assert gemma.describe()["threads"]["last"] == used
    assert llama_cpp.llama_n_threads(gemma._llama.ctx) == used
    from oblix_llamacpp.threads import batch_threads

    assert llama_cpp.llama_n_threads_batch(gemma._llama.ctx) == batch_threads()  # prompts: not adapted


@pytest.mark.anyio
async def test_a_fixed_thread_count_is_kept() -> None:
    backend = LlamaCppBackend("gemma-3-270m", n_ctx=256, n_threads=1)
    await backend.start()
    try:
        assert "".join([c.text async for c in backend.stream(ask("Name a colour.", 4))])
        import llama_cpp

        assert llama_cpp.llama_n_threads(backend._llama.ctx) == 1
        assert backend.describe()["threads"] == {"mode": "fixed"} and backend.n_threads == 1
    finally:
        await backend.aclose()
    with pytest.raises(ConfigError, match="n_threads must be"):
        LlamaCppBackend("gemma-3-270m", n_threads=0)


# Prompts the packaged model looped on with last round's chat transcript (issue 33), and
# others that invite repetition; the few-shot prompt, penalties and loop guard end them.
# README_START: the text the benchmark of those prompts pipes in (the start of README.md, frozen).
LOOPY = [
    "summarise this\n\n" + README_START,
    "Why is the sky blue?",
    "List ten fruits.",
    "Tell me a story about a dragon.",
]


@pytest.mark.anyio
async def test_no_answer_loops_and_each_ends_complete(gemma: LlamaCppBackend) -> None:
    from oblix_llamacpp.loops import find_loop

    for prompt in LOOPY:
        request = GenerationRequest((ChatMessage("user", prompt),), temperature=0.0)  # default max_tokens
        chunks = [c async for c in gemma.stream(request)]
        text = "".join(c.text for c in chunks)
        assert text and find_loop(text) is None, (prompt[:30], text)
        assert chunks[-1].finish_reason == "stop"  # complete, not cut at the token limit
        assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens <= 160


@pytest.mark.anyio
async def test_the_loop_guard_ends_a_looping_answer_cleanly() -> None:
    """Last round's setup (Vicuna, no penalties) loops on this prompt; the guard alone ends it
    before the first repeated sentence, as a complete answer."""
    from oblix_llamacpp.loops import find_loop

    prompt = "summarise this\n\n" + README_START  # stdin after the prompt, as `oblix run` sends it
    request = GenerationRequest((ChatMessage("user", prompt),), temperature=0.0, max_tokens=200)
    answers = {}
    for guard in (False, True):
        backend = LlamaCppBackend("gemma-3-270m", n_ctx=2048, chat_format="vicuna", repetition_guard=guard)
        await backend.start()
        try:
            chunks = [c async for c in backend.stream(request)]
        finally:
            await backend.aclose()
        answers[guard] = ("".join(c.text for c in chunks), chunks[-1].finish_reason)
    assert find_loop(answers[False][0]) is not None  # without the guard: a loop, to the limit
    text, finish = answers[True]
    assert text and find_loop(text) is None and finish == "stop"
    assert answers[False][0].startswith(text)  # the same answer, ended before the repetition


@pytest.mark.anyio
async def test_a_long_prompt_fits_with_the_packaged_models_short_answers(
    home: Path, gemma: LlamaCppBackend
) -> None:
    """The few-shot format ends answers at 160 tokens, so a prompt that leaves less than the
    usual 512 of the 2,048-token window (but more than 160) is answered, not refused."""
    await gemma.prepare()
    assert gemma.default_answer_tokens == 160
    words = 1200
    while (
        gemma.count_message_tokens([ChatMessage("user", "apple " * words + "How many fruits?")]) < 2048 - 400
    ):
        words += 50
    prompt = "apple " * words + "How many fruits?"
    counted = gemma.count_message_tokens([ChatMessage("user", prompt)])
    assert 2048 - 512 < counted < 2048 - 160
    async with OblixClient(home=home) as client:
        await client.hook_backend(gemma)
        try:
            result = await client.execute(prompt, stream=False, store=False, temperature=0)
        finally:
            await client.unhook_model(gemma.model_id, release=False)  # the module fixture owns it
    assert result["model_id"] == "llama_cpp:gemma-3-270m"
    assert result["routing_decision"]["models"][0]["context"]["needed"] == counted + 160
