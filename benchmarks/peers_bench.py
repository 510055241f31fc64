"""Orchestration cost per call: Oblix beside LiteLLM's Router, side by side in one run.

Both sides orchestrate instant models, so what is measured is the orchestration itself:

* LiteLLM: ``Router.acompletion`` with ``mock_response`` (no network), two deployments,
  fallbacks from the first to the second, ``num_retries=2``, a 10-message history.
* Oblix: ``client.execute(stream=False)`` with two instant models (:class:`InstantBackend`:
  a fixed answer with fixed token counts, as LiteLLM's ``mock_response`` gives), the first
  forced with ``fallback=True``, two agents (cached verdicts), retries on (the default
  ``max_retries=2``), usage recorded and budgets checked as always, and a session in an
  in-memory store (a new session every 20 calls, so histories stay short).

With ``--auto``, Oblix is called as most users call it: ``execute()`` with automatic
routing (no ``model=``) between a local and a cloud instant model, the real
``ResourceMonitor`` and ``ConnectivityAgent`` hooked (sampling in the background), fallback
on; LiteLLM as above.

Calls alternate in blocks (same machine conditions for both), each block starting once the
tasks the previous one left on the event loop are done (LiteLLM logs every call in a
background task); the table gives medians per call and the ratio LiteLLM / Oblix (higher:
Oblix cheaper). Also counted: Oblix's worker-thread round trips per call
(``anyio.to_thread.run_sync``).

Run: ``.venv/bin/pip install litellm`` (benchmark only; not in the test extra), then
``.venv/bin/python -m benchmarks.peers_bench [--calls 400] [--auto]``. ``--profile``: Oblix's
calls under cProfile; ``--stages``: the median µs of each stage of Oblix's calls (``STAGES``),
each timed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from benchmarks._table import print_table
from oblix.plugin import GenerationRequest, ModelBackend, StreamChunk, Usage, hookimpl
from oblix_core.agents import AgentCheck, BaseAgent
from oblix_core.client import OblixClient
from oblix_core.errors import SessionExistsError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.sessions.store import SessionChanges, SessionStore

HISTORY = [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: a short chat message"}
    for i in range(10)
]
PROMPT = "What next?"


class InstantBackend(ModelBackend):
    """An instant model, the peer of LiteLLM's ``mock_response``: one chunk with a fixed answer,
    fixed token counts and a finish reason (no prompt counted: the scripted test backend
    counts every prompt for its usage, work no model backend of Oblix does itself)."""

    model_type = "instant"
    ANSWER = StreamChunk("Hi there", Usage(10, 20), "stop")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        yield self.ANSWER


class InstantPlugin:
    """Registers :class:`InstantBackend` as the ``instant`` model type."""

    @hookimpl
    def oblix_register_models(self, register: Callable[[str, type[ModelBackend]], None]) -> None:
        register("instant", InstantBackend)


class MemoryStore(SessionStore):
    """Sessions in a dict (for the benchmark: no durability), with change cursors.

    Each session's messages are a list appended in place (a header record and a list).
    """

    name = "memory"
    blocking = False  # a dict: called on the event loop

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[SessionRecord, list[Message]]] = {}
        self._lock = threading.Lock()

    def create(self, session: SessionRecord, *, idempotency_key: str | None = None) -> None:
        with self._lock:
            if session.id in self._sessions:
                raise SessionExistsError(session.id)
            header = SessionRecord(session.id, session.title, session.created_at, metadata=session.metadata)
            self._sessions[session.id] = (header, list(session.messages))

    def _get(self, session_id: str) -> tuple[SessionRecord, list[Message]]:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(f"Session {session_id} does not exist.") from None

    def load(self, session_id: str) -> SessionRecord:
        header, messages = self._get(session_id)
        return SessionRecord(header.id, header.title, header.created_at, None, tuple(messages))

    def load_changes(self, session_id: str, cursor: Hashable | None, max_messages: int) -> SessionChanges:
        header, messages = self._get(session_id)
        count = len(messages)
        if isinstance(cursor, int) and cursor <= count and count - cursor <= max_messages:
            return SessionChanges(count, tuple(messages[cursor:]), True, None)
        return SessionChanges(count, tuple(messages[max(0, count - max_messages) :]), False, header)

    def append_messages(
        self, session_id: str, messages: Sequence[Message], *, idempotency_key: str | None = None
    ) -> None:
        with self._lock:
            self._get(session_id)[1].extend(messages)

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        return dict(self._get(session_id)[0].metadata)

    def update_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        raise NotImplementedError

    def list(self, limit: int = 50, filter_metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []

    def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None


class SteadyAgent(BaseAgent):
    """An agent with a fixed, cached verdict (its sampling is not on the request path)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, interval=60)

    def sample(self) -> AgentCheck:
        return AgentCheck(self.name, "AVAILABLE", None, reason="steady")


def _count_hops() -> list[int]:
    """Count ``anyio.to_thread.run_sync`` calls (every module calls it through the module)."""
    hops = [0]
    original = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops[0] += 1
        return await original(func, *args, **kwargs)

    anyio.to_thread.run_sync = counting  # type: ignore[assignment]
    return hops


async def _oblix(home: Path, auto: bool = False) -> tuple[Callable[[], Awaitable[object]], OblixClient]:
    client = OblixClient(home=home, session_store=MemoryStore(), plugins=[InstantPlugin()])
    if auto:
        from oblix.agents import ConnectivityAgent, ResourceMonitor

        await client.hook_model("instant", "local", local=True)
        await client.hook_model("instant", "cloud", local=False)
        for agent in (ResourceMonitor(), ConnectivityAgent()):
            client.hook_agent(agent)
            agent.refresh()
    else:
        await client.hook_model("instant", "primary", local=True)
        await client.hook_model("instant", "backup", local=True)
        for agent in (SteadyAgent("resources"), SteadyAgent("network")):
            client.hook_agent(agent)
            agent.refresh()
    calls = [0]
    session = [""]

    async def call() -> object:
        if calls[0] % 20 == 0:
            session[0] = await client.create_session(title="bench")
        calls[0] += 1
        if auto:
            return await client.execute(PROMPT, session_id=session[0], stream=False, fallback=True)
        return await client.execute(
            PROMPT, session_id=session[0], stream=False, model="instant:primary", fallback=True
        )

    return call, client


def _litellm() -> Callable[[], Awaitable[object]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    from litellm import Router

    deployment = {"api_key": "sk-benchmark", "mock_response": "Hi there"}
    router = Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {"model": "openai/gpt-4o-mini", **deployment}},
            {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o", **deployment}},
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=2,
    )
    messages = [*HISTORY, {"role": "user", "content": PROMPT}]

    async def call() -> object:
        return await router.acompletion(model="primary", messages=messages, mock_response="Hi there")

    return call


async def _settle() -> None:
    """Let tasks the last block left on the event loop finish (LiteLLM logs each call in a
    background task), so that neither side's block pays for the other's leftovers."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:  # a long-lived task (a client's background worker) just costs the timeout
        await asyncio.wait(others, timeout=0.05)


async def _timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    await _settle()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def profile(calls: int, auto: bool = False) -> None:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        oblix, client = await _oblix(Path(tmp), auto)
        await _timed(oblix, 20)
        profiler = cProfile.Profile()
        profiler.enable()
        await _timed(oblix, calls)
        profiler.disable()
        await client.shutdown()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


#: The stages ``--stages`` times: (label, module, owner within it or "", function name).
STAGES = [
    ("OblixClient._request (checks, Request)", "oblix_core.client", "OblixClient", "_request"),
    ("session: warm history", "oblix_core.request.conversation", "ResponseStream", "_session"),
    ("planning (all of it)", "oblix_core.request.conversation", "ResponseStream", "_plan"),
    ("  agents' checks", "oblix_core.request.conversation", "", "current_checks"),
    ("  policy (routing.route)", "oblix_core.request.routing", "", "route"),
    ("  screening", "oblix_core.request.execution", "Executor", "screen"),
    ("    fits and entries", "oblix_core.request.routing", "", "_fit_all"),
    ("executor (all its events)", "oblix_core.request.execution", "Executor", "run"),
    ("finishing (all of it)", "oblix_core.request.conversation", "ResponseStream", "_finish"),
    ("  usage record built", "oblix_core.request.conversation", "", "answer_record"),
    ("  record queued + exchange stored", "oblix_core.request.conversation", "ResponseStream", "_persist"),
    ("  result dict", "oblix_core.request.conversation", "ResponseStream", "_result"),
]


def _timer(func: Callable[..., Any], samples: list[int]) -> Callable[..., Any]:
    """``func`` (a function, coroutine function or async generator function) timed per call;
    an async generator is timed from its start to its end, less the time its reader held it."""
    clock = time.perf_counter_ns
    if inspect.isasyncgenfunction(func):

        async def agen(*args: Any, **kwargs: Any) -> Any:
            started, outside = clock(), 0
            try:
                async for item in func(*args, **kwargs):
                    paused = clock()
                    yield item
                    outside += clock() - paused
            finally:
                samples.append(clock() - started - outside)

        return agen
    if inspect.iscoroutinefunction(func):

        async def coro(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return await func(*args, **kwargs)
            finally:
                samples.append(clock() - started)

        return coro

    def plain(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return func(*args, **kwargs)
        finally:
            samples.append(clock() - started)

    return plain


async def stages(calls: int, auto: bool = False) -> None:
    """Median µs of each stage of a call (each timed alone; the timers add ~0.5 µs apiece)."""
    timed: dict[str, list[int]] = {}
    originals = []
    for label, module_name, owner_name, name in STAGES:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, _timer(getattr(owner, name), timed.setdefault(label, [])))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            oblix, client = await _oblix(Path(tmp), auto)
            await _timed(oblix, 50)
            for samples in timed.values():
                samples.clear()
            whole = await _timed(oblix, calls)
            await client.shutdown()
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
    load = os.getloadavg()
    rows = [("whole call (timers included)", round(statistics.median(whole) * 1e6, 1), calls)]
    rows += [(label, round(statistics.median(v) / 1000, 1), len(v)) for label, v in timed.items() if v]
    print_table(f"Stages of a call, median µs (load average {load[0]:.2f})", ["stage", "µs", "n"], rows)


async def main(calls: int, rounds: int, auto: bool = False) -> None:
    hops = _count_hops()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        oblix, client = await _oblix(Path(tmp), auto)
        litellm = _litellm()
        await _timed(oblix, 20)  # warm both
        await _timed(litellm, 20)
        before = hops[0]
        await _timed(oblix, 20)
        per_call_hops = (hops[0] - before) / 20
        times: dict[str, list[float]] = {"oblix": [], "litellm": []}
        for _ in range(rounds):
            times["oblix"] += await _timed(oblix, calls // rounds)
            times["litellm"] += await _timed(litellm, calls // rounds)
        await client.shutdown()
    ours, theirs = (statistics.median(times[k]) * 1000 for k in ("oblix", "litellm"))
    mode = "automatic routing, real agents" if auto else "named model with fallback"
    print_table(
        f"Orchestration per call, {mode}, instant models (median ms of {calls} calls, "
        f"{rounds} interleaved blocks; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})",
        ["path", "ms per call", "LiteLLM / this", "worker-thread hops per call"],
        [
            ("LiteLLM Router.acompletion (mock_response)", theirs, 1.0, "-"),
            ("Oblix execute (in-memory session)", ours, theirs / ours, per_call_hops),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="profile Oblix's calls instead")
    parser.add_argument("--stages", action="store_true", help="time each stage of Oblix's calls instead")
    parser.add_argument("--auto", action="store_true", help="automatic routing with the real agents")
    args = parser.parse_args()
    if args.profile:
        asyncio.run(profile(args.calls, args.auto))
    elif args.stages:
        asyncio.run(stages(args.calls, args.auto))
    else:
        asyncio.run(main(args.calls, args.rounds, args.auto))
