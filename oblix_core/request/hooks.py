"""The request path's hooks, called without pluggy's dispatch when no plugin implements one.

Most installations implement none of the request observers (``oblix_request_start`` and
the like); pluggy still builds the call for each (defaults, argument checks, a copy of
the implementation list, its call loop). :class:`RequestHooks` wraps the plugin manager's
hook relay: a hook with no implementation *at the time of the call* returns what pluggy
returns for it (``None`` for a ``firstresult`` hook, else ``[]``) at once; any other call
goes to pluggy unchanged. Implementations are looked up on every call, so a plugin
registered later is called from its next request on; nothing is cached but the lookup of
each hook's caller.
"""

from __future__ import annotations

from typing import Any


class RequestHooks:
    """A pluggy hook relay (``plugin_manager.hook``) whose hooks skip dispatch when unimplemented."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay

    def __getattr__(self, name: str) -> Any:
        hook = getattr(self._relay, name)  # AttributeError for an unknown hook, as pluggy's
        caller = _Skipping(hook)
        setattr(self, name, caller)  # found once; the relay keeps the same caller per hook
        return caller


class _Skipping:
    """One hook: pluggy's call when it has implementations, its empty result when none."""

    __slots__ = ("_empty", "_hook")

    def __init__(self, hook: Any) -> None:
        self._hook = hook
        spec = getattr(hook, "spec", None)
        self._empty: list[Any] | None = None if spec is not None and spec.opts.get("firstresult") else []

    @property
    def name(self) -> str:
        return str(self._hook.name)

    def get_hookimpls(self) -> list[Any]:
        return self._hook.get_hookimpls()  # pluggy's own copy

    def __call__(self, **kwargs: Any) -> Any:
        if not self._hook.get_hookimpls():
            return None if self._empty is None else []
        return self._hook(**kwargs)


def request_hooks(relay: Any) -> Any:
    """``relay`` wrapped in :class:`RequestHooks` (once: a wrapped relay is returned as it is)."""
    return relay if isinstance(relay, RequestHooks) else RequestHooks(relay)
