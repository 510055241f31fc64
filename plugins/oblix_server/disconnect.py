"""Cancel work as soon as the HTTP client goes away, without a task group per request.

The server runs under uvicorn, on asyncio. :class:`CancelOnDisconnect` runs the work in
the caller's own task, inside an anyio cancel scope, and one plain asyncio task waits for
``http.disconnect``; only that watcher ever cancels the scope. The usual request (no
disconnect) thus spawns one task and cancels nothing through anyio, whose task groups and
``cancel()`` (which formats the task's repr) cost more than the rest of the request's
plumbing together on an instant backend.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
from starlette.types import Receive


class CancelOnDisconnect:
    """``with CancelOnDisconnect(receive) as watch:`` cancels the block when the client disconnects.

    Afterwards ``watch.disconnected`` says whether it did (the cancellation is absorbed, as
    by any anyio cancel scope). ``receive`` must have delivered the whole request body.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._scope = anyio.CancelScope()
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False

    def __enter__(self) -> CancelOnDisconnect:
        self._scope.__enter__()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._watcher is not None
        self._watcher.cancel()
        return bool(self._scope.__exit__(exc_type, exc, tb))

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server failing to tell is no disconnect
            return
        self.disconnected = True
        self._scope.cancel()
