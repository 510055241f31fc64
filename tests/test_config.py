"""``config.toml``: every table, key, type and range checked once, by the settings classes;
errors name the file, table and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from oblix_core.config.settings import TABLES, load_config
from oblix_core.errors import ConfigError
from oblix_core.fields import rule_of
from oblix_core.request.budgets import BudgetSettings
from oblix_core.request.execution import ExecutionSettings

FULL = """
[routing]
preference = "cloud-first"

[sessions]
store = "file"
options = { root = "/tmp/x" }

[execution]
max_retries = 0
backoff_initial = 0
backoff_max = 1.5
first_token_timeout = 30
total_timeout = 60
failure_threshold = 1
cooldown = 0

[agents]
enabled = ["connectivity"]
[agents.connectivity]
latency_threshold = 150

[[models]]
type = "llama_cpp"
name = "gemma-3-270m"
n_ctx = 2048

[[models]]
type = "openai"
name = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
local = false
context_window = 128000

[aliases]
fast = "llama_cpp:gemma-3-270m"
"""


def write(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_a_full_valid_file_loads(home: Path) -> None:
    write(home, FULL)
    config = load_config(home)
    assert config.preference == "cloud-first" and config.store_options == {"root": "/tmp/x"}
    assert config.execution.max_retries == 0 and config.execution.first_token_timeout == 30
    assert config.agents_enabled == ("connectivity",)
    assert config.agent_options == {"connectivity": {"latency_threshold": 150}}
    assert [m["type"] for m in config.models] == ["llama_cpp", "openai"]
    assert config.aliases == {"fast": "llama_cpp:gemma-3-270m"}


def test_a_missing_file_gives_the_defaults(home: Path) -> None:
    assert load_config(home).preference == "local-first"


BAD = [
    ('[routing]\npreferance = "local-first"\n', "[routing] has an unknown key 'preferance'"),
    ('[routing]\npreference = "sideways"\n', "[routing] preference must be one of local-first, cloud-first"),
    ('[sessions]\nstroe = "file"\n', "[sessions] has an unknown key 'stroe'"),
    ("[sessions]\nstore = 3\n", "[sessions] store must be a store name"),
    ('[sessions]\noptions = "x"\n', "[sessions] options must be a table"),
    ('[execution]\nmax_retries = "two"\n', "[execution] max_retries must be an integer >= 0, got 'two'"),
    ("[execution]\nmax_retries = true\n", "[execution] max_retries must be an integer >= 0, got True"),
    ("[execution]\nmax_retries = -1\n", "[execution] max_retries must be an integer >= 0"),
    (
        "[execution]\nfirst_token_timeout = -5\n",
        "[execution] first_token_timeout must be a number of seconds > 0",
    ),
    ("[execution]\ntotal_timeout = 0\n", "[execution] total_timeout must be a number of seconds > 0"),
    ("[execution]\nfailure_threshold = 0\n", "[execution] failure_threshold must be an integer >= 1"),
    ("[execution]\ncooldown = -1\n", "[execution] cooldown must be a number of seconds >= 0"),
    ("[execution]\nretries = 2\n", "[execution] has an unknown key 'retries'"),
    ('[agents]\nenabled = "connectivity"\n', "[agents] enabled must be a list of agent names"),
    ("[agents]\nconnectivity = 3\n", "[agents] connectivity must be a table of that agent's options"),
    ('[[models]]\nname = "x"\n', "[[models]] entry 1 needs a 'type' key"),
    ('[[models]]\ntype = "openai"\nname = ""\n', "[[models]] entry 1 name must be a model name"),
    (
        '[[models]]\ntype = "openai"\nname = "m"\nlocal = "yes"\n',
        "[[models]] entry 1 local must be true or false",
    ),
    ('[[models]]\ntype = "a"\nname = "m"\ncontext_window = 8\n', "context_window must be an integer >= 16"),
    ('models = "x"\n', "models must be written as [[models]] tables"),
    ("[aliases]\nfast = 3\n", "[aliases] fast must be a model id"),
    ('[routnig]\npreference = "local-first"\n', "unknown table [routnig]"),
    ("routing = 1\n", "routing must be a table, written [routing]"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_each_mistake_names_the_file_table_and_key(home: Path, text: str, message: str) -> None:
    path = write(home, text)
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("table", sorted(n for n, t in TABLES.items() if t.settings is not None))
def test_every_setting_of_every_table_says_what_it_must_be(table: str) -> None:
    settings = TABLES[table].settings
    assert settings is not None
    assert all(rule_of(f) is not None for f in attrs.fields(settings)), table


def test_settings_classes_check_their_own_values_in_python_too() -> None:
    with pytest.raises(ConfigError, match="max_retries must be an integer >= 0, got -1"):
        ExecutionSettings(max_retries=-1)
    with pytest.raises(ValueError, match="total_timeout must be a number of seconds > 0"):
        ExecutionSettings(total_timeout=0)
    with pytest.raises(ConfigError, match="daily_usd must be a number of USD >= 0, got True"):
        BudgetSettings(daily_usd=True)
    assert ExecutionSettings(first_token_timeout=None).first_token_timeout is None
    assert BudgetSettings(daily_usd=2).daily_usd == 2.0


def test_a_bad_budget_names_the_file_table_and_key(home: Path) -> None:
    path = write(home, "[budgets]\ndaily_usd = -1\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{path}: [budgets] daily_usd must be a number of USD >= 0")
    ):
        load_config(home)


def test_an_infinite_price_names_the_file_table_and_key(home: Path) -> None:
    """TOML has ``inf``: a price of it made every answer's cost overflow."""
    path = write(home, '[[models]]\ntype = "openai"\nname = "gpt-4o-mini"\nprice_out = inf\n')
    expected = re.escape(f"{path}: ") + ".*price_out must be a finite number of USD >= 0, got inf"
    with pytest.raises(ConfigError, match=expected):
        load_config(home)


def test_a_failed_change_leaves_the_file_as_it_was(home: Path) -> None:
    from oblix_core.config.write import update_config

    path = write(home, FULL)
    with pytest.raises(ConfigError, match="max_retries must be an integer >= 0"):
        update_config(lambda doc: doc["execution"].__setitem__("max_retries", -3), home)
    assert path.read_text() == FULL


def test_an_unreadable_file_is_a_config_error(home: Path) -> None:
    write(home, "[routing\n")
    with pytest.raises(ConfigError, match="Cannot read"):
        load_config(home)


def test_an_unknown_agent_table_is_named_when_agents_are_hooked(home: Path) -> None:
    from oblix_core.client import OblixClient

    write(home, "[agents.conectivity]\nlatency_threshold = 150\n")
    client = OblixClient(home=home)
    try:
        with pytest.raises(ConfigError, match="unknown agent 'conectivity'"):
            client.hook_default_agents()
    finally:
        client.store.close()


def test_oblix_server_options_take_their_defaults_from_server_settings() -> None:
    pytest.importorskip("uvicorn")
    from oblix_server.command import server
    from oblix_server.settings import ServerSettings

    defaults = ServerSettings()

    def default(param: Any) -> Any:  # a repeatable option without a default gives the command ()
        return () if param.multiple and not isinstance(param.default, list | tuple) else param.default

    options = {p.name: default(p) for p in server.params if p.name in attrs.fields_dict(ServerSettings)}
    assert {"host", "port", "api_key", "max_concurrency", "queue_size", "max_body_bytes", "store_all"} <= set(
        options
    )
    assert options == {name: getattr(defaults, name) for name in options}
