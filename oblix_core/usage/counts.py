"""Token counts from endpoints, checked in one place before anything counts them.

Every backend's usage mapping (OpenAI, Ollama, Claude) builds its :class:`Usage` with
:func:`provider_usage`, and the executor checks what any backend reported again with
:func:`checked_usage`: a count is a non-negative ``int`` of at most :data:`MAX_TOKEN_COUNT`.
Anything else — a string, a list, a float, a negative number, ``1e30`` — is dropped (the
executor then estimates that count) and named in a note, which the usage record keeps in its
``error`` field. So a hostile or broken endpoint can neither lower what a budget sees nor make
the ledger write fail.
"""

from __future__ import annotations

from typing import Any

from oblix_core.models.backend import Usage

#: The largest token count believed from an endpoint (no answer comes near a billion tokens).
MAX_TOKEN_COUNT = 10**9
#: The ``StreamChunk.info`` / metrics key that carries what was wrong with reported counts.
USAGE_ERROR = "usage_error"


def token_count(value: Any) -> int | None:
    """``value`` if it is a valid token count, else ``None`` (``None`` stays ``None``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_TOKEN_COUNT else None


def _describe(name: str, value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{name}={shown} ({type(value).__name__}) is not a token count (an integer 0..{MAX_TOKEN_COUNT})"


def provider_usage(
    input_tokens: Any = None, output_tokens: Any = None, cached_input_tokens: Any = None
) -> tuple[Usage, str | None]:
    """A :class:`Usage` of the valid counts among those an endpoint reported, and a note naming
    the invalid ones (``None`` when all were valid or absent). An invalid count becomes
    ``None``, which the executor replaces with its estimate."""
    problems = []
    counts = []
    for name, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cached_input_tokens", cached_input_tokens),
    ):
        count = token_count(value)
        if value is not None and count is None:
            problems.append(_describe(name, value))
        counts.append(count)
    inputs, outputs, cached = counts
    if cached is not None and inputs is not None and cached > inputs:
        problems.append(f"cached_input_tokens={cached} exceeds input_tokens={inputs}")
        cached = None
    note = "; ".join(problems) or None
    return Usage(inputs, outputs, cached), note


def checked_usage(usage: Usage | None) -> tuple[Usage | None, str | None]:
    """``usage`` (from any backend) with invalid counts dropped, and a note naming them."""
    if usage is None:
        return None, None
    inputs, outputs, cached = usage.input_tokens, usage.output_tokens, usage.cached_input_tokens
    if (
        absent_or_valid(inputs)
        and absent_or_valid(outputs)
        and absent_or_valid(cached)
        and (cached is None or inputs is None or cached <= inputs)
    ):
        return usage, None  # every count valid (the usual answer): the same Usage, nothing rebuilt
    return provider_usage(inputs, outputs, cached)


def absent_or_valid(value: Any) -> bool:
    """Whether ``value`` is ``None`` or a valid token count (:func:`token_count`'s test, as one
    expression for the request path; ``type``: a bool is no count)."""
    return value is None or (type(value) is int and 0 <= value <= MAX_TOKEN_COUNT)


def usage_info(note: str | None) -> dict[str, Any] | None:
    """The ``StreamChunk.info`` that carries ``note`` into the answer's metrics (``None``: nothing)."""
    return {USAGE_ERROR: note} if note else None
