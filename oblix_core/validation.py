"""Validation of user-supplied text and JSON values, the same on every path.

Metadata, context, filters, titles, prompts and imported documents all go through these
checks before anything is stored or sent, so bad input is a clear
:class:`~oblix_core.errors.OblixError` instead of a ``RecursionError``,
``UnicodeEncodeError`` or a silently changed value.

Rules: JSON values only (dict with ``str`` keys, list, str, int, float, bool, None);
no NaN or infinity; strings must be encodable as UTF-8 (no lone surrogates); nesting
at most :data:`MAX_DEPTH` levels.

Booleans given as text (an HTTP header, a ``KEY=VALUE`` option) go through
:func:`parse_flag`: a short list of clear words, anything else refused, never guessed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from oblix_core.errors import OblixError

#: Deepest nesting accepted in metadata, context, filters and imported documents.
MAX_DEPTH = 64
#: Integers must fit in 64 bits (what JSON readers elsewhere, Redis and SQLite handle).
MAX_INT = 2**63
#: Text that :func:`parse_flag` reads as true, and as false (compared stripped, case-insensitively).
TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


def check_text(value: str, name: str, error: type[OblixError] = OblixError) -> str:
    """``value`` if it can be stored as UTF-8 (no lone surrogates), else ``error``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{name} contains characters that cannot be encoded as UTF-8 (a lone surrogate at "
            f"position {exc.start}); remove them and try again."
        ) from None
    return value


def check_json(value: Any, name: str, error: type[OblixError] = OblixError) -> Any:
    """``value`` if it is a JSON value under the module's rules, else ``error`` naming the problem.

    Walks the value iteratively, so a 10,000-deep structure is rejected, not a RecursionError.
    """
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(f"{name} is nested more than {MAX_DEPTH} levels deep; flatten it.")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise error(
                        f"{where} has a key {key!r} of type {type(key).__name__}; keys must be strings."
                    )
                check_text(key, f"a key of {where}", error)
                stack.append((child, f"{where}[{key!r}]", depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            check_text(item, where, error)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise error(f"{where} is {item!r}; JSON has no NaN or infinity.")
        elif isinstance(item, int) and not isinstance(item, bool) and not -MAX_INT <= item < MAX_INT:
            raise error(f"{where} is an integer too large to store; keep integers within 64 bits.")
        elif not (item is None or isinstance(item, bool | int)):
            raise error(f"{where} has a value of type {type(item).__name__}, which JSON cannot store.")
    return value


def check_json_dict(value: Any, name: str, error: type[OblixError] = OblixError) -> dict[str, Any]:
    """A copy of ``value`` (``None`` -> ``{}``) if it is a JSON object under the module's rules."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{name} must be a dict, got {type(value).__name__}.")
    return dict(check_json(value, name, error))


def loads(text: str, name: str, error: type[OblixError] = OblixError) -> Any:
    """Parse JSON text strictly: no NaN/Infinity, bounded depth, clear errors."""

    def reject_constant(constant: str) -> Any:
        raise error(f"{name} contains {constant}; JSON has no NaN or infinity.")

    try:
        data = json.loads(text, parse_constant=reject_constant)
    except RecursionError:
        raise error(f"{name} is nested too deeply to read (limit {MAX_DEPTH} levels).") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise error(f"{name} is not valid JSON: {exc}.") from None
    return check_json(data, name, error)


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values that keeps booleans apart from numbers (``1 != true``)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and bool(left == right)


def parse_flag(value: object, name: str, error: type[OblixError] = OblixError) -> bool:
    """A boolean given as text: one of :data:`TRUE_WORDS` or :data:`FALSE_WORDS`, else ``error``.

    ``True``/``False`` (and the numbers 1 and 0) pass through. Anything else (``"enabled"``,
    ``"TRUE!"``, ``""``, ``2``) is refused with a message naming ``name``, never read as
    false: where privacy is at stake (``local_only``) a misspelt "yes" must not send anything
    to the cloud.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise error(
        f"{name} must be true or false (one of {', '.join(sorted(TRUE_WORDS))} / "
        f"{', '.join(sorted(FALSE_WORDS))}), got {value!r}."
    )
