"""oblix_core.request.waits: the executor's wait for a model's next chunk, under asyncio and trio.

The iterators are real async generators; the deadlines are short and the slow steps long,
so each outcome is decided by which of the two comes first, not by how long anything took.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator

import anyio
import pytest

from oblix_core.request.waits import WaitExpired, next_item, on_asyncio

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])]


async def _ready() -> AsyncGenerator[str, None]:
    yield "a"
    yield "b"


async def _slow(delay: float) -> AsyncGenerator[str, None]:
    await anyio.sleep(delay)
    yield "late"


async def _scoped(delay: float) -> AsyncGenerator[str, None]:
    """Opens a cancel scope of its own and suspends inside it (as httpx's timeouts do)."""
    with anyio.move_on_after(30):
        await anyio.sleep(delay)
    yield "scoped"


async def _own_timeout() -> AsyncGenerator[str, None]:
    raise TimeoutError("the backend's read timed out")
    yield "never"  # pragma: no cover


def _soon(seconds: float) -> float:
    return time.monotonic() + seconds


async def test_ready_items_then_the_end() -> None:
    native = on_asyncio()
    items = _ready()
    assert await next_item(items, _soon(30), native) == "a"
    assert await next_item(items, math.inf, native) == "b"
    with pytest.raises(StopAsyncIteration):
        await next_item(items, _soon(30), native)


async def test_on_asyncio_tells_the_backend(anyio_backend: str) -> None:
    assert on_asyncio() is (anyio_backend == "asyncio")


async def test_a_wait_past_its_deadline_expires_and_the_step_is_cancelled() -> None:
    items = _slow(30)
    with anyio.fail_after(10):  # a wait that ignored its deadline would fail here
        with pytest.raises(WaitExpired):
            await next_item(items, _soon(0.05), on_asyncio())
    await items.aclose()


async def test_a_slow_item_within_its_deadline_arrives() -> None:
    assert await next_item(_slow(0.01), _soon(30), on_asyncio()) == "late"
    assert await next_item(_slow(0.01), math.inf, on_asyncio()) == "late"


async def test_an_iterator_with_its_own_cancel_scope_nests_under_the_wait() -> None:
    native = on_asyncio()
    assert await next_item(_scoped(0.01), _soon(30), native) == "scoped"
    items = _scoped(30)
    with pytest.raises(WaitExpired):
        await next_item(items, _soon(0.05), native)
    await items.aclose()


async def test_a_passed_deadline_expires_even_when_the_item_is_ready() -> None:
    with pytest.raises(WaitExpired):
        await next_item(_ready(), time.monotonic() - 1, on_asyncio())


async def test_the_backends_own_timeout_is_an_expired_wait() -> None:
    with pytest.raises(WaitExpired):
        await next_item(_own_timeout(), _soon(30), on_asyncio())


async def test_an_outer_cancellation_is_not_taken_for_an_expired_wait() -> None:
    items = _slow(30)
    with anyio.move_on_after(0.05) as outer:
        await next_item(items, _soon(30), on_asyncio())
    assert outer.cancelled_caught
    await items.aclose()
