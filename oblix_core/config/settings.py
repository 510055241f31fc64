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

    [documents]                       # the document index and the default embedder (DocumentsSettings)
    index = "pgvector"                # default "sqlite" (one file in the home); or a plugin's index
    embedder = "local"                # of new workspaces; e.g. "openai:text-embedding-3-small"
    options = { dsn_env = "OBLIX_PGVECTOR_DSN" }   # the index's options; NAME_env read from the environment

Oblix never writes API keys into this file; it only reads what the user put there.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from oblix_core import fields
from oblix_core.documents.settings import DocumentsSettings
from oblix_core.errors import ConfigError
from oblix_core.request.budgets import BudgetSettings
from oblix_core.request.execution import ExecutionSettings
from oblix_core.request.routing import PREFERENCES

HOME_ENV = "OBLIX_HOME"
CONFIG_FILE = "config.toml"


#: The home of the client whose parts are being built (see :func:`building_parts_in`).
_BUILDING_IN: ContextVar[Path | None] = ContextVar("oblix_building_in", default=None)


def oblix_home() -> Path:
    """Where Oblix keeps its data: while a client builds its parts (a plugin's store factory),
    that client's home; else ``$OBLIX_HOME`` or the platform's user data directory for Oblix."""
    building = _BUILDING_IN.get()
    if building is not None:
        return building
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path(platformdirs.user_data_dir("oblix"))


@contextmanager
def building_parts_in(home: Path) -> Iterator[None]:
    """Within the block, :func:`oblix_home` is ``home`` (a client building its store and models)."""
    token = _BUILDING_IN.set(home)
    try:
        yield
    finally:
        _BUILDING_IN.reset(token)


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
    #: ``[documents]``: the document index, its options and the default embedder.
    documents: DocumentsSettings = attrs.field(factory=DocumentsSettings)
    path: Path | None = None


def load_config(home: Path | None = None) -> Config:
    """Read ``config.toml`` from ``home`` (default :func:`oblix_home`); missing file = defaults.

    Every table, key, type and range is checked once, by the settings classes of
    :data:`TABLES`; a :class:`ConfigError` names the file, the table and the key.
    """
    path = (home or oblix_home()) / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}. Fix the file or remove it.") from exc
    parsed = parse(data, path)
    routing = parsed.get("routing", Parsed(RoutingSection()))
    sessions = parsed.get("sessions", Parsed(SessionsSection()))
    agents = parsed.get("agents", Parsed(AgentsSection()))
    execution = parsed.get("execution", Parsed(ExecutionSettings()))
    budgets = parsed.get("budgets", Parsed(BudgetSettings()))
    documents = parsed.get("documents", Parsed(DocumentsSettings()))
    return Config(
        preference=routing.settings.preference,
        default_model=routing.settings.default_model,
        store=sessions.settings.store,
        store_options=dict(sessions.settings.options),
        execution=execution.settings,
        models=tuple(data.get("models", [])),
        agents_enabled=tuple(agents.settings.enabled),
        agent_options=dict(agents.others),
        aliases=dict(parsed["aliases"].others) if "aliases" in parsed else {},
        budgets=budgets.settings,
        documents=documents.settings,
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


# -- the tables of config.toml ----------------------------------------------------------------

#: ``[[models]]`` prices, USD per million tokens (kept by Oblix, not passed to the backend).
PRICE_KEYS = ("price_in", "price_out")


@attrs.frozen
class RoutingSection:
    """``[routing]``."""

    preference: str = attrs.field(default="local-first", validator=fields.one_of(PREFERENCES))
    default_model: str | None = attrs.field(
        default=None, validator=fields.text("a model id, bare name or alias").or_none()
    )


@attrs.frozen
class SessionsSection:
    """``[sessions]``: the store and its factory's options."""

    store: str = attrs.field(default="file", validator=fields.text("a store name (file, redis, s3...)"))
    options: dict[str, Any] = attrs.field(factory=dict, validator=fields.TABLE)


@attrs.frozen
class AgentsSection:
    """``[agents]``: which agents are enabled; other keys are the agents' option tables."""

    enabled: list[str] = attrs.field(factory=list, validator=fields.names("a list of agent names"))


def _text_or_none(expect: str = "a non-empty string") -> fields.Rule:
    return fields.text(expect).or_none()


@attrs.frozen
class ModelEntry:
    """One ``[[models]]`` table: the keys Oblix reads; other keys are the backend's options."""

    type: str = attrs.field(validator=fields.text("a model type (llama_cpp, openai, ollama...)"))
    name: str = attrs.field(validator=fields.text("a model name"))
    endpoint: str | None = attrs.field(default=None, validator=_text_or_none("a URL"))
    api_key_env: str | None = attrs.field(
        default=None, validator=_text_or_none("the name of an environment variable")
    )
    api_key: str | None = attrs.field(default=None, validator=_text_or_none(), repr=False)
    local: bool | None = attrs.field(default=None, validator=fields.BOOL.or_none())
    context_window: int | None = attrs.field(default=None, validator=fields.integer(16).or_none())
    defaults: dict[str, Any] | None = attrs.field(default=None, validator=fields.TABLE.or_none())
    price_in: float | None = attrs.field(default=None, validator=fields.PRICE.or_none())
    price_out: float | None = attrs.field(default=None, validator=fields.PRICE.or_none())


@attrs.frozen
class Table:
    """How one table of ``config.toml`` is read: the settings class of its keys, the rule for
    keys that class does not name (``None``: they are errors), and whether it is an array."""

    settings: type | None
    other: fields.Rule | None = None
    array: bool = False


#: Every table of ``config.toml``; another table, key, type or range is an error.
TABLES: dict[str, Table] = {
    "routing": Table(RoutingSection),
    "sessions": Table(SessionsSection),
    "execution": Table(ExecutionSettings),
    "agents": Table(AgentsSection, other=fields.Rule("a table of that agent's options", fields.TABLE.test)),
    "models": Table(ModelEntry, other=fields.ANY, array=True),  # backend options: each backend checks its own
    "aliases": Table(None, other=fields.text('a model id, e.g. "llama_cpp:gemma-3-270m"')),
    "budgets": Table(BudgetSettings),
    "documents": Table(DocumentsSettings),
}


@attrs.frozen
class Parsed:
    """One table read: its settings object and the keys its ``other`` rule took."""

    settings: Any
    others: dict[str, Any] = attrs.field(factory=dict)


def _structure(values: dict[str, Any], table: Table, where: str, path: Path) -> Parsed:
    """``values`` as ``table``'s settings class (which validates them) plus the other keys."""
    known = attrs.fields_dict(table.settings) if table.settings else {}
    for key, field in known.items():
        if field.default is attrs.NOTHING and key not in values:
            raise ConfigError(f"{path}: {where} needs a {key!r} key.")
    others = {k: v for k, v in values.items() if k not in known}
    try:
        for key, value in others.items():
            if table.other is None:
                names = ", ".join(known)
                raise ConfigError(f"{path}: {where} has an unknown key {key!r} (known keys: {names}).")
            table.other.check(key, value)
        settings = (
            table.settings(**{k: v for k, v in values.items() if k in known}) if table.settings else None
        )
    except fields.InvalidSetting as exc:
        raise ConfigError(f"{path}: {where} {exc.key} must be {exc.expect}, got {exc.value!r}.") from None
    return Parsed(settings, others)


def parse(data: dict[str, Any], path: Path) -> dict[str, Parsed]:
    """Every table of ``data`` (a parsed ``config.toml``) read and checked; ``[[models]]`` entries
    are checked and kept as the file wrote them. Raises :class:`ConfigError` naming the table and key."""
    parsed: dict[str, Parsed] = {}
    for name, value in data.items():
        table = TABLES.get(name)
        if table is None:
            raise ConfigError(
                f"{path}: unknown table [{name}] (known tables: {', '.join(TABLES)}). Check its spelling."
            )
        if table.array:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(f"{path}: {name} must be written as [[{name}]] tables.")
            for i, entry in enumerate(value, 1):
                _structure(entry, table, f"[[{name}]] entry {i}", path)
        elif not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a table, written [{name}].")
        else:
            parsed[name] = _structure(value, table, f"[{name}]", path)
    return parsed


def validate(data: dict[str, Any], path: Path) -> None:
    """Check ``data`` (a parsed ``config.toml``) as :func:`load_config` does; raise :class:`ConfigError`."""
    parse(data, path)
