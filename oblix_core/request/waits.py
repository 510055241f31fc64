"""Waiting for a model's next chunk under a deadline, with a timer only when the wait waits.

An instant backend (a cached answer, a test double, a model whose chunks are queued) hands
its next chunk over without suspending; arming a deadline timer for such a wait costs
more than the wait. :func:`next_item` enters a cancel scope without a deadline (no timer),
steps the iterator once by hand inside it, and only if the iterator suspends gives the scope
its deadline (anyio schedules the timer then) and waits for the rest. The scope is entered
before the iterator runs, so scopes the iterator opens nest inside it (trio checks that). A
deadline already passed is a timeout whether the item was ready or not, as a scope entered
after its deadline would say.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class WaitExpired(Exception):
    """The wait passed its deadline, or the iterator raised its own ``TimeoutError``."""


async def next_item(iterator: AsyncIterator[T], deadline: float) -> T:
    """``iterator``'s next item, waiting until ``deadline`` at most (``time.monotonic()``'s clock;
    ``math.inf``: no deadline).

    Raises ``StopAsyncIteration`` at the iterator's end and :class:`WaitExpired` past the
    deadline (the iterator's pending step is then cancelled, as a cancel scope does).
    """
    if time.monotonic() >= deadline:
        raise WaitExpired
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
