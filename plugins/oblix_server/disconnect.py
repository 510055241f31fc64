"""Cancel work as soon as the HTTP client goes away, without a task group per request.

The server runs under uvicorn, on asyncio. :class:`CancelOnDisconnect` runs the work in
the caller's own task, inside an anyio cancel scope that only a disconnect cancels. The
server's own protocols (:mod:`oblix_server.connections`) offer the ASGI extension
:data:`DISCONNECT_HOOK`: a callback the connection calls when it is lost, so the usual
request (no disconnect) spawns nothing and cancels nothing. Without it (another server),
one plain asyncio task waits for ``http.disconnect`` instead. Either way no anyio task
group is made per request: their ``cancel()`` formats the task's repr, and the pair cost
more than the rest of the request's plumbing together on an instant backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

import anyio
from starlette.types import Receive, Scope

#: The ASGI extension (``scope["extensions"]``) of a connection that tells of its loss:
#: ``hook(callback)`` calls ``callback()`` when the connection is lost (at once if it is
#: already) and returns a function that withdraws it.
DISCONNECT_HOOK = "oblix.disconnect"
DisconnectHook = Callable[[Callable[[], None]], Callable[[], None]]


class CancelOnDisconnect:
    """``with CancelOnDisconnect(scope, receive) as watch:`` cancels the block when the client leaves.

    Afterwards ``watch.disconnected`` says whether it did (the cancellation is absorbed, as
    by any anyio cancel scope). ``receive`` must have delivered the whole request body.
    """

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._hook: DisconnectHook | None = scope.get("extensions", {}).get(DISCONNECT_HOOK)
        self._receive = receive
        self._scope = anyio.CancelScope()
        self._stop: Callable[[], object] | None = None
        self.disconnected = False

    def __enter__(self) -> CancelOnDisconnect:
        self._scope.__enter__()
        if self._hook is not None:
            self._stop = self._hook(self._lost)
        else:
            self._stop = asyncio.get_running_loop().create_task(self._watch()).cancel
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._stop is not None
        self._stop()
        return bool(self._scope.__exit__(exc_type, exc, tb))

    def _lost(self) -> None:
        self.disconnected = True
        self._scope.cancel()

    async def _watch(self) -> None:
        try:
            while (await self._receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server failing to tell is no disconnect
            return
        self._lost()
