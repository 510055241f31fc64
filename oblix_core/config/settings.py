"""Where Oblix keeps its data, and the optional TOML configuration file.

``$OBLIX_HOME`` (default: the platform's user data dir, e.g. ``~/.local/share/oblix``)
holds ``sessions/`` for the file store and ``config.toml``::

    [routing]
    preference = "local-first"        # or "cloud-first"
    default_model = "fast"            # tried first by oblix run/chat without -m (oblix models default)

    [sessions]
    store = "file"                    # or "redis", "s3", a plugin's store
    options = {}                      # passed to the store's factory

    [execution]                       # see ExecutionSettings
    max_retries = 2
    first_token_timeout = 120

    [agents]                          # hooked by the CLI and OblixClient.hook_default_agents()
    enabled = ["resource_monitor", "connectivity"]   # default: every registered agent
    [agents.connectivity]             # keyword arguments of that agent
    latency_threshold = 150

    [[models]]                        # hooked by the CLI and OblixClient.hook_configured_models()
    type = "llama_cpp"
    name = "gemma-3-270m"

    [[models]]
    type = "openai"
    name = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"    # read from the environment, never stored

    [aliases]                         # short names for model ids (CLI --model, chat)
    fast = "llama_cpp:gemma-3-270m"

    [budgets]                         # USD; when spent, cloud models are unavailable
    daily_usd = 1.0                   # (oblix_core.request.budgets); [[models]] take price_in/price_out
    monthly_usd = 20.0

Oblix never writes API keys into this file; it only reads what the user put there.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from oblix_core.errors import ConfigError
from oblix_core.request.budgets import BudgetSettings
from oblix_core.request.execution import ExecutionSettings
from oblix_core.request.routing import PREFERENCES

HOME_ENV = "OBLIX_HOME"
CONFIG_FILE = "config.toml"


def oblix_home() -> Path:
    """``$OBLIX_HOME`` or the platform's user data directory for Oblix."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path(platformdirs.user_data_dir("oblix"))


@attrs.frozen
class Config:
    """The parsed ``config.toml`` (all sections optional)."""

    preference: str = "local-first"
    #: ``[routing] default_model``: tried first by ``oblix run``/``chat`` without ``-m``.
    default_model: str | None = None
    store: str = "file"
    store_options: dict[str, Any] = attrs.field(factory=dict)
    execution: ExecutionSettings = attrs.field(factory=ExecutionSettings)
    models: tuple[dict[str, Any], ...] = ()
    agents_enabled: tuple[str, ...] = ()
    agent_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: ``[aliases]``: short names for model ids, usable wherever a model id is taken.
    aliases: dict[str, str] = attrs.field(factory=dict)
    #: ``[budgets]``: daily and monthly spending limits (see :mod:`oblix_core.request.budgets`).
    budgets: BudgetSettings = attrs.field(factory=BudgetSettings)
    path: Path | None = None


def load_config(home: Path | None = None) -> Config:
    """Read ``config.toml`` from ``home`` (default :func:`oblix_home`); missing file = defaults.

    Every table, key, type and range is checked against :data:`SCHEMA`;
    a :class:`ConfigError` names the file, the table and the key.
    """
    path = (home or oblix_home()) / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}. Fix the file or remove it.") from exc
    validate(data, path)
    routing, sessions, agents = data.get("routing", {}), data.get("sessions", {}), data.get("agents", {})
    return Config(
        preference=routing.get("preference", "local-first"),
        default_model=routing.get("default_model"),
        store=sessions.get("store", "file"),
        store_options=dict(sessions.get("options", {})),
        execution=ExecutionSettings.from_dict(data.get("execution", {})),
        models=tuple(data.get("models", [])),
        agents_enabled=tuple(agents.get("enabled", [])),
        agent_options={k: v for k, v in agents.items() if isinstance(v, dict)},
        aliases=dict(data.get("aliases", {})),
        budgets=BudgetSettings.from_dict(data.get("budgets", {})),
        path=path,
    )


def model_arguments(entry: dict[str, Any]) -> dict[str, Any]:
    """``hook_model`` keyword arguments for a ``[[models]]`` entry (``api_key_env`` resolved)."""
    options = {k: v for k, v in entry.items() if k not in {"type", "name", "api_key_env", *PRICE_KEYS}}
    env = entry.get("api_key_env")
    if env:
        options["api_key"] = os.environ.get(str(env))
    return {"model_type": entry["type"], "model_name": entry["name"], **options}


#: The embedded defaults: a packaged local model, plus OpenAI when a key is in the environment.
DEFAULT_LOCAL_MODEL: dict[str, Any] = {"type": "llama_cpp", "name": "gemma-3-270m"}
DEFAULT_CLOUD_MODEL: dict[str, Any] = {
    "type": "openai",
    "name": "gpt-4o-mini",
    "api_key_env": "OPENAI_API_KEY",
}


def default_model_entries(registered: Iterable[str]) -> list[dict[str, Any]]:
    """``[[models]]`` entries used when the config file lists none."""
    available = set(registered)
    entries = [DEFAULT_LOCAL_MODEL] if DEFAULT_LOCAL_MODEL["type"] in available else []
    if os.environ.get("OPENAI_API_KEY"):  # tried even without its extra: hooking it says what to install
        entries.append(DEFAULT_CLOUD_MODEL)
    return [dict(e) for e in entries]


# -- the schema of config.toml ---------------------------------------------------------------


@attrs.frozen
class Key:
    """What one key must hold: ``expect`` (for the message) and the ``test`` of a value."""

    expect: str
    test: Callable[[Any], bool]


@attrs.frozen
class Section:
    """A table (or, with ``array``, an array of tables) and its keys.

    ``other`` checks keys not listed in ``keys`` (``None``: they are errors).
    """

    keys: dict[str, Key] = attrs.field(factory=dict)
    other: Key | None = None
    array: bool = False
    required: tuple[str, ...] = ()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(minimum: int) -> Key:
    return Key(
        f"an integer >= {minimum}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
    )


def _seconds(bound: float, strict: bool) -> Key:
    op = ">" if strict else ">="
    return Key(
        f"a number of seconds {op} {bound:g}",
        lambda v: _is_number(v) and (v > bound if strict else v >= bound),
    )


def _execution_keys() -> dict[str, Key]:
    """One key per :class:`ExecutionSettings` field: its type and its validator's bound."""
    keys = {}
    for field in attrs.fields(ExecutionSettings):
        bound = getattr(field.validator, "bound", 0)
        strict = getattr(field.validator, "compare_op", ">") == ">"  # _positive_or_none: > 0
        integer = str(field.type).startswith("int")
        keys[field.name] = _integer(int(bound)) if integer else _seconds(bound, strict)
    return keys


def _text(expect: str = "a non-empty string") -> Key:
    return Key(expect, lambda v: isinstance(v, str) and bool(v.strip()))


_TABLE = Key("a table", lambda v: isinstance(v, dict))
_USD = Key("a number of USD >= 0", lambda v: _is_number(v) and v >= 0)
#: ``[[models]]`` prices, USD per million tokens (kept by Oblix, not passed to the backend).
PRICE_KEYS = ("price_in", "price_out")
_BOOL = Key("true or false", lambda v: isinstance(v, bool))
_ANY = Key("any value", lambda v: True)

#: Every table of ``config.toml``; another table, key, type or range is an error.
SCHEMA: dict[str, Section] = {
    "routing": Section(
        {
            "preference": Key(f"one of {', '.join(PREFERENCES)}", lambda v: v in PREFERENCES),
            "default_model": _text("a model id, bare name or alias"),
        }
    ),
    "sessions": Section({"store": _text("a store name (file, redis, s3...)"), "options": _TABLE}),
    "execution": Section(_execution_keys()),
    "agents": Section(
        {
            "enabled": Key(
                "a list of agent names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)
            )
        },
        other=Key("a table of that agent's options", lambda v: isinstance(v, dict)),
    ),
    "models": Section(
        {
            "type": _text("a model type (llama_cpp, openai, ollama...)"),
            "name": _text("a model name"),
            "endpoint": _text("a URL"),
            "api_key_env": _text("the name of an environment variable"),
            "api_key": _text(),
            "local": _BOOL,
            "context_window": _integer(16),
            "defaults": _TABLE,
            "price_in": _USD,
            "price_out": _USD,
        },
        other=_ANY,  # backend options: each backend checks its own
        array=True,
        required=("type", "name"),
    ),
    "aliases": Section(other=_text('a model id, e.g. "llama_cpp:gemma-3-270m"')),
    "budgets": Section({"daily_usd": _USD, "monthly_usd": _USD}),
}


def _check_table(table: dict[str, Any], section: Section, where: str, path: Path) -> None:
    for key in section.required:
        if key not in table:
            raise ConfigError(f"{path}: {where} needs a {key!r} key.")
    for key, value in table.items():
        rule = section.keys.get(key, section.other)
        if rule is None:
            known = ", ".join(section.keys)
            raise ConfigError(f"{path}: {where} has an unknown key {key!r} (known keys: {known}).")
        if not rule.test(value):
            raise ConfigError(f"{path}: {where} {key} must be {rule.expect}, got {value!r}.")


def validate(data: dict[str, Any], path: Path) -> None:
    """Check ``data`` (a parsed ``config.toml``) against :data:`SCHEMA`; raise :class:`ConfigError`."""
    for name, value in data.items():
        section = SCHEMA.get(name)
        if section is None:
            raise ConfigError(
                f"{path}: unknown table [{name}] (known tables: {', '.join(SCHEMA)}). Check its spelling."
            )
        if section.array:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(f"{path}: {name} must be written as [[{name}]] tables.")
            for i, table in enumerate(value, 1):
                _check_table(table, section, f"[[{name}]] entry {i}", path)
        elif not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a table, written [{name}].")
        else:
            _check_table(value, section, f"[{name}]", path)
