"""The request path's hooks, called without pluggy's dispatch when no plugin implements one.

Most installations implement none of the request observers (``oblix_request_start`` and
the like); pluggy still builds the call for each (defaults, argument checks, a copy of
the implementation list, its call loop). :class:`RequestHooks` wraps the plugin manager's
hook relay: a hook with no implementation *at the time of the call* returns what pluggy
returns for it (``None`` for a ``firstresult`` hook, else ``[]``) at once; any other call
goes to pluggy unchanged. Implementations are looked up on every call, so a plugin
registered later is called from its next request on; nothing is cached but the lookup of
each hook's caller. An implementation that raises anything but an ``OblixError`` (a routing
plugin's bug) fails the request with a :class:`~oblix_core.errors.PluginError` naming the
plugin, not with its bare exception.
"""

from __future__ import annotations

import traceback
from typing import Any

from oblix_core.errors import OblixError, PluginError


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
        try:
            return self._hook(**kwargs)
        except OblixError:
            raise  # said on purpose (a routing plugin's NoModelAvailableError, say)
        except Exception as exc:
            raise failed_plugin(self._hook, exc) from exc


def failed_plugin(hook: Any, exc: Exception) -> PluginError:
    """A plugin's implementation of ``hook`` raised ``exc``: which plugin (the implementation
    whose code is in the traceback), what it raised, how to go on without it."""
    codes = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in hook.get_hookimpls()}
    frames = traceback.walk_tb(exc.__traceback__)
    name = next((codes[frame.f_code] for frame, _ in frames if frame.f_code in codes), None)
    who = f"Plugin {name!r}" if name else f"A plugin implementing {hook.name}"
    fix = f"OBLIX_DISABLE_PLUGINS={name}" if name else "OBLIX_DISABLE_PLUGINS (see oblix plugins)"
    return PluginError(
        f"{who} failed in {hook.name}: {type(exc).__name__}: {str(exc)[:300]}. The request stopped "
        f"there. Fix the plugin, or run without it: {fix}."
    )


def request_hooks(relay: Any) -> Any:
    """``relay`` wrapped in :class:`RequestHooks` (once: a wrapped relay is returned as it is)."""
    return relay if isinstance(relay, RequestHooks) else RequestHooks(relay)
