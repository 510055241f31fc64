"""The terminal side of the SDK: answers printed as they stream, Ctrl-C routed to a scope, and
errors worded for a person. Used by ``execute(stream=True)``, ``chat=True`` and the CLI; it
never imports the client or the command line.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import attrs

from oblix_core.errors import NoModelAvailableError, OblixError
from oblix_core.terminal.printable import on_terminal

if TYPE_CHECKING:
    from oblix_core.request.conversation import ResponseStream


async def print_answer(
    response: ResponseStream, *, live: bool = True, out: TextIO | None = None
) -> dict[str, Any]:
    """Consume ``response``, printing the answer (as it streams when ``live``); return the result.

    The answer ends with a newline. If the answer fails midway, what was printed stays
    printed and the line is ended before the error propagates.
    """
    out = out or sys.stdout
    printed = False
    try:
        async with response:
            async for text in response:
                if live:
                    out.write(on_terminal(text, out))
                    out.flush()
                    printed = True
    finally:
        if printed:
            out.write("\n")
            out.flush()
    assert response.result is not None
    if not live:
        out.write(on_terminal(response.result["response"], out) + "\n")
        out.flush()
    return response.result


def cli_message(exc: OblixError) -> str:
    """The error's message for a terminal: no model id said twice, no doubled full stops."""
    if isinstance(exc, NoModelAvailableError) and exc.errors:
        lines = [f"  {model}: {_without_prefix(error, model)}" for model, error in exc.errors.items()]
        return "No model could answer:\n" + "\n".join(lines)
    return re.sub(r"(?<!\.)\.\.(?!\.)", ".", str(exc))  # "x.." -> "x.", an ellipsis stays


def _without_prefix(error: str, model_id: str) -> str:
    for prefix in (f"{model_id}: ", f"{model_id} "):
        if error.startswith(prefix):
            return error[len(prefix) :]
    return error


@attrs.define
class CtrlC:
    """Where Ctrl-C lands while :func:`catch_ctrl_c` runs.

    Each press cancels the scope opened with :meth:`cancels`, if one is open, and is
    counted in ``pressed``; a press with no scope open is ignored (never a traceback).
    """

    scope: anyio.CancelScope | None = None
    pressed: int = 0

    def interrupt(self) -> None:
        self.pressed += 1
        if self.scope is not None:
            self.scope.cancel()

    @contextlib.contextmanager
    def cancels(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that Ctrl-C cancels (check ``scope.cancelled_caught`` after it)."""
        with anyio.CancelScope() as scope:
            self.scope = scope
            try:
                yield scope
            finally:
                self.scope = None


#: The open :func:`catch_ctrl_c` blocks, innermost last; a press goes to the innermost.
_ACTIVE: list[CtrlC] = []


@contextlib.asynccontextmanager
async def catch_ctrl_c() -> AsyncIterator[CtrlC]:
    """Route SIGINT to a :class:`CtrlC` instead of ``KeyboardInterrupt``.

    Nested blocks share one signal receiver; a press goes to the innermost block. Only
    in the main thread (signals cannot be received elsewhere); in another thread the
    returned object is never pressed and Python's default handling stays.
    """
    keys = CtrlC()
    if _ACTIVE or threading.current_thread() is not threading.main_thread():
        _ACTIVE.append(keys)
        try:
            yield keys
        finally:
            _ACTIVE.remove(keys)
        return
    with anyio.open_signal_receiver(signal.SIGINT) as signals:

        async def watch() -> None:
            async for _ in signals:
                _ACTIVE[-1].interrupt()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                _ACTIVE.append(keys)
                try:
                    yield keys
                finally:
                    _ACTIVE.remove(keys)
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the body's own error, not a group of ours
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise
