"""Settings fields that say what they must hold: one validator per kind of value.

A settings class (``ExecutionSettings``, ``BudgetSettings``, the sections of ``config.toml``)
declares each field with a :class:`Rule`; the attrs class then checks its own values, in
Python and from the config file alike, and an :class:`InvalidSetting` says which field,
what it must be and what it got. ``oblix_core.config.settings`` adds the file and table to
the message; nothing else validates these values again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from oblix_core.errors import ConfigError


class InvalidSetting(ConfigError, ValueError):
    """A setting's value is not what its field takes: ``key``, ``expect`` and ``value`` say how."""

    def __init__(self, key: str, expect: str, value: Any) -> None:
        super().__init__(f"{key} must be {expect}, got {value!r}.")
        self.key = key
        self.expect = expect
        self.value = value


@attrs.frozen
class Rule:
    """An attrs validator: ``test`` a value, else raise :class:`InvalidSetting` saying ``expect``.

    ``optional`` lets ``None`` through (a setting that may be switched off).
    """

    expect: str
    test: Callable[[Any], bool]
    optional: bool = False

    def __call__(self, _instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        self.check(attribute.name, value)

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`InvalidSetting` unless ``value`` is what this rule takes."""
        if value is None and self.optional:
            return
        if not self.test(value):
            raise InvalidSetting(key, self.expect, value)

    def or_none(self) -> Rule:
        """This rule, letting ``None`` through."""
        return attrs.evolve(self, optional=True)


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(minimum: int) -> Rule:
    """An integer (not a bool) ``>= minimum``."""
    return Rule(
        f"an integer >= {minimum}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum
    )


def seconds(bound: float = 0, *, strict: bool = False) -> Rule:
    """A number of seconds ``>= bound`` (``> bound`` when ``strict``)."""
    op = ">" if strict else ">="
    return Rule(
        f"a number of seconds {op} {bound:g}",
        lambda v: is_number(v) and (v > bound if strict else v >= bound),
    )


def text(expect: str = "a non-empty string") -> Rule:
    """A string with something besides whitespace."""
    return Rule(expect, lambda v: isinstance(v, str) and bool(v.strip()))


def one_of(choices: Sequence[str]) -> Rule:
    """One of ``choices``."""
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices)


def names(expect: str) -> Rule:
    """A list of strings."""
    return Rule(expect, lambda v: isinstance(v, list | tuple) and all(isinstance(n, str) for n in v))


TABLE = Rule("a table", lambda v: isinstance(v, dict))
USD = Rule("a number of USD >= 0", lambda v: is_number(v) and v >= 0)
#: A price (USD per million tokens): finite, since an infinite price makes every answer's cost
#: overflow (counted as the most an answer can cost instead of what was meant).
PRICE = Rule("a finite number of USD >= 0", lambda v: is_number(v) and 0 <= v < math.inf)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
ANY = Rule("any value", lambda v: True)


def rule_of(field: attrs.Attribute[Any]) -> Rule | None:
    """The :class:`Rule` validating ``field`` (``None`` if it has none)."""
    return field.validator if isinstance(field.validator, Rule) else None
