"""Waiting for a model's next chunk under a deadline, with a timer only when the wait waits.

An instant backend (a cached answer, a test double, a model whose chunks are queued) hands
its next chunk over without suspending; arming a deadline timer for such a wait costs
more than the wait. :func:`next_item` steps the iterator once by hand; only if it suspends
does the rest of the wait run under the deadline:

* on asyncio, under ``asyncio.timeout_at`` entered after the step: asyncio's timeout is no
  cancel scope, so scopes the iterator opened (httpx's, anyio's) need not nest inside it, and
  it cancels the task natively, which anyio's scopes pass on;
* on trio (and any other backend), under an anyio cancel scope entered *before* the step
  (trio checks that scopes nest) without a deadline, which it is given only if the step
  suspends (a scope without a deadline arms no timer).

A deadline already passed is a timeout whether the item was ready or not, as a scope
entered after its deadline would say.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class WaitExpired(Exception):
    """The wait passed its deadline, or the iterator raised its own ``TimeoutError``."""


def on_asyncio() -> bool:
    """Whether the calling task is an asyncio task (else trio's, or another backend's)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio event loop in this thread
        return False


async def next_item(iterator: AsyncIterator[T], deadline: float, native: bool) -> T:
    """``iterator``'s next item, waiting until ``deadline`` at most (``time.monotonic()``'s clock;
    ``math.inf``: no deadline). ``native``: the task is an asyncio task (:func:`on_asyncio`).

    Raises ``StopAsyncIteration`` at the iterator's end and :class:`WaitExpired` past the
    deadline (the iterator's pending step is then cancelled) or on its own ``TimeoutError``.
    """
    if time.monotonic() >= deadline:
        raise WaitExpired
    if not native:
        return await _next_in_scope(iterator, deadline)
    step: Coroutine[Any, Any, T] = iterator.__anext__()  # type: ignore[assignment]
    try:
        try:
            pending = step.send(None)
        except StopIteration as done:  # the item was ready: no timer was armed
            return done.value
        if deadline == math.inf:
            return await _Resumed(step, pending)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            return await _Resumed(step, pending)
    except TimeoutError:  # asyncio's timeout, or the backend's own
        raise WaitExpired from None


async def _next_in_scope(iterator: AsyncIterator[T], deadline: float) -> T:
    """:func:`next_item` for trio and other backends: an anyio cancel scope around the step."""
    step: Coroutine[Any, Any, T] = iterator.__anext__()  # type: ignore[assignment]
    with anyio.CancelScope() as scope:
        try:
            try:
                pending = step.send(None)
            except StopIteration as done:  # the item was ready: no timer was armed
                return done.value
            if deadline != math.inf:
                scope.deadline = anyio.current_time() + (deadline - time.monotonic())
            return await _Resumed(step, pending)
        except TimeoutError:  # the backend's own
            pass
    raise WaitExpired  # here only after a TimeoutError or this scope's own cancellation


class _Resumed:
    """The rest of a coroutine already stepped once: awaiting it forwards what the event loop
    sends or throws (a cancellation too) and returns the coroutine's value."""

    __slots__ = ("_pending", "_step")

    def __init__(self, step: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._step = step
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        step, value = self._step, self._pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:
                try:
                    value = step.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = step.send(sent)
                except StopIteration as done:
                    return done.value
