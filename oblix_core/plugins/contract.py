"""Checks at the door: a plugin's part (backend, store, agent, embedder, index...) that lacks a
required method is refused when it is registered, naming the method, not at its first use.

Any registry may call :func:`check_methods` (it imports nothing but the errors), e.g. the
documents' embedders and indexes::

    check_methods("Embedder", name, cls, ("embed",), base=Embedder)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oblix_core.errors import PluginError


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
            f"define {'it' if len(missing) == 1 else 'them'} (docs/plugins.md lists what a "
            f"{kind.lower()} must implement)."
        )
