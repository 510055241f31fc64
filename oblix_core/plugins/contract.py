"""Checks at the door: a plugin's part (backend, store, agent, embedder, index...) that lacks a
required method, or defines one of the wrong shape (a coroutine where an async generator belongs),
is refused when it is registered, naming the method, not at its first use.

Any registry may call :func:`check_methods` (it imports nothing but the errors), e.g. the
documents' embedders and indexes::

    check_methods("Embedder", name, cls, ("embed",), base=Embedder)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from oblix_core.errors import PluginError


def _a(noun: str) -> str:
    """``noun`` with its indefinite article ("an agent", "a model backend")."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def required_methods(base: type, *extra: str) -> tuple[str, ...]:
    """The abstract methods of ``base`` plus ``extra``: what every subclass must define."""
    return tuple(sorted({*getattr(base, "__abstractmethods__", ()), *extra}))


def missing_methods(part: Any, required: Iterable[str], base: type | None = None) -> list[str]:
    """The names in ``required`` that ``part`` (a class or an instance) does not implement.

    A method is missing when ``part`` has no callable of that name, when it is still abstract,
    or, with ``base``, when it is ``base``'s own (a placeholder the subclass must replace).
    """
    cls = part if isinstance(part, type) else type(part)
    abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
    missing = []
    for name in required:
        found = getattr(cls, name, None)
        inherited = base is not None and found is not None and found is getattr(base, name, None)
        if not callable(found) or name in abstract or inherited:
            missing.append(name)
    return missing


def check_methods(kind: str, name: str, part: Any, required: Iterable[str], base: type | None = None) -> None:
    """Raise :class:`PluginError` naming each required method ``part`` lacks (see :func:`missing_methods`).

    ``kind`` and ``name`` say what is being registered (``"Model backend"``, ``"shout"``).
    """
    missing = missing_methods(part, required, base)
    if missing:
        cls = part if isinstance(part, type) else type(part)
        methods = ", ".join(f"{m}()" for m in missing)
        raise PluginError(
            f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement {methods}: "
            f"define {'it' if len(missing) == 1 else 'them'} (docs/plugins.md lists what "
            f"{_a(kind.lower())} must implement)."
        )


def wrong_shapes(part: Any, *, streams: Iterable[str] = (), plain: Iterable[str] = ()) -> list[str]:
    """What is wrong with the shape of ``part``'s methods, one phrase each (empty: nothing).

    ``streams`` must give an async generator (``async def`` with ``yield``, or a plain method
    returning one): an ``async def`` without ``yield`` is a coroutine, a ``def`` with ``yield``
    a synchronous generator, neither can be iterated with ``async for``. ``plain`` are called
    as functions, often in a worker thread: an ``async def`` would return a coroutine nobody awaits.
    """
    cls = part if isinstance(part, type) else type(part)
    wrong = []
    for name in streams:
        found = getattr(cls, name, None)
        if inspect.iscoroutinefunction(found) or inspect.isgeneratorfunction(found):
            how = (
                "a coroutine (async def without yield)"
                if inspect.iscoroutinefunction(found)
                else ("a synchronous generator (def with yield)")
            )
            wrong.append(f"{name}() is {how}; it must be an async generator (async def with yield)")
    for name in plain:
        found = getattr(cls, name, None)
        if inspect.iscoroutinefunction(found) or inspect.isasyncgenfunction(found):
            wrong.append(f"{name}() is async; it must be a plain def (Oblix calls it, in a worker thread)")
    return wrong


def check_shapes(
    kind: str, name: str, part: Any, *, streams: Iterable[str] = (), plain: Iterable[str] = ()
) -> None:
    """Raise :class:`PluginError` naming each method of ``part`` of the wrong shape (:func:`wrong_shapes`)."""
    wrong = wrong_shapes(part, streams=streams, plain=plain)
    if wrong:
        cls = part if isinstance(part, type) else type(part)
        raise PluginError(
            f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}): {'; '.join(wrong)} "
            f"(docs/plugins.md: what {_a(kind.lower())} must implement)."
        )
