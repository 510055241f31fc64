"""Where Oblix keeps its data, and the optional TOML configuration file.

``$OBLIX_HOME`` (default: the platform's user data dir, e.g. ``~/.local/share/oblix``)
holds ``sessions/`` for the file store and ``config.toml``::

    [routing]
    preference = "local-first"        # or "cloud-first"

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

Oblix never writes API keys into this file; it only reads what the user put there.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from oblix_core.errors import ConfigError
from oblix_core.execution import ExecutionSettings
from oblix_core.routing import PREFERENCES

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
    store: str = "file"
    store_options: dict[str, Any] = attrs.field(factory=dict)
    execution: ExecutionSettings = attrs.field(factory=ExecutionSettings)
    models: tuple[dict[str, Any], ...] = ()
    agents_enabled: tuple[str, ...] = ()
    agent_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    path: Path | None = None


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{key}] must be a table.")
    return value


def load_config(home: Path | None = None) -> Config:
    """Read ``config.toml`` from ``home`` (default :func:`oblix_home`); missing file = defaults."""
    path = (home or oblix_home()) / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}. Fix the file or remove it.") from exc
    routing = _table(data, "routing", path)
    sessions = _table(data, "sessions", path)
    preference = routing.get("preference", "local-first")
    if preference not in PREFERENCES:
        raise ConfigError(f"{path}: [routing] preference must be one of {PREFERENCES}, got {preference!r}.")
    models = data.get("models", [])
    if not isinstance(models, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("name"), str)
        for m in models
    ):
        raise ConfigError(f"{path}: each [[models]] entry needs string 'type' and 'name' keys.")
    store_options = sessions.get("options", {})
    if not isinstance(store_options, dict):
        raise ConfigError(f"{path}: [sessions] options must be a table.")
    agents = _table(data, "agents", path)
    enabled = agents.get("enabled", [])
    if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
        raise ConfigError(f"{path}: [agents] enabled must be a list of agent names.")
    agent_options = {k: v for k, v in agents.items() if isinstance(v, dict)}
    return Config(
        preference=preference,
        agents_enabled=tuple(enabled),
        agent_options=agent_options,
        store=str(sessions.get("store", "file")),
        store_options=store_options,
        execution=ExecutionSettings.from_dict(_table(data, "execution", path)),
        models=tuple(models),
        path=path,
    )


def model_arguments(entry: dict[str, Any]) -> dict[str, Any]:
    """``hook_model`` keyword arguments for a ``[[models]]`` entry (``api_key_env`` resolved)."""
    options = {k: v for k, v in entry.items() if k not in {"type", "name", "api_key_env"}}
    env = entry.get("api_key_env")
    if env:
        options["api_key"] = os.environ.get(str(env))
    return {"model_type": entry["type"], "model_name": entry["name"], **options}


#: The embedded defaults: a packaged local model, plus OpenAI when a key is in the environment.
DEFAULT_LOCAL_MODEL = {"type": "llama_cpp", "name": "gemma-3-270m"}
DEFAULT_CLOUD_MODEL = {"type": "openai", "name": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}


def default_model_entries(registered: Iterable[str]) -> list[dict[str, Any]]:
    """``[[models]]`` entries used when the config file lists none."""
    available = set(registered)
    entries = [DEFAULT_LOCAL_MODEL] if DEFAULT_LOCAL_MODEL["type"] in available else []
    if os.environ.get("OPENAI_API_KEY") and DEFAULT_CLOUD_MODEL["type"] in available:
        entries.append(DEFAULT_CLOUD_MODEL)
    return [dict(e) for e in entries]
