"""Per-request model options (``execute(..., top_p=0.9)``) checked against what the candidate
models declare they take (:attr:`ModelBackend.request_options`), so a typo is an error naming
what was meant instead of an option silently dropped."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from oblix_core.errors import ConfigError
from oblix_core.models.backend import ModelBackend

#: Options every backend takes (the core passes them as fields of the request).
GENERATION_OPTIONS = frozenset({"temperature", "max_tokens"})


def candidates_for(models: Sequence[ModelBackend], forced: str | None, fallback: bool) -> list[ModelBackend]:
    """The models a request may reach: the forced one (by id or bare name) unless ``fallback``, else all."""
    if forced is None or fallback:
        return list(models)
    named = [m for m in models if forced in (m.model_id, m.model_name)]
    return named or list(models)


def check_request_options(models: Sequence[ModelBackend], options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an option none of ``models`` takes, naming close matches.

    A backend whose ``request_options`` is ``None`` passes any option through (an
    OpenAI-compatible server may take fields of its own): with one among ``models`` nothing
    is refused here.
    """
    if not models or not options or any(m.request_options is None for m in models):
        return
    known = set(GENERATION_OPTIONS).union(*(m.request_options or () for m in models))
    unknown = sorted(set(options) - known)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=3)
    meant = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown model option {name!r}: no candidate model takes it "
        f"({', '.join(m.model_id for m in models)}).{meant} Options they take: {', '.join(sorted(known))}."
    )
