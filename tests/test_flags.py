"""Booleans that arrive as text: one parser (``parse_flag``), and the places that use it.

The HTTP header ``X-Oblix-Local-Only`` is tested against a real server in
``tests/test_server_faults.py``; here are the parser, the CLI's ``KEY=VALUE`` options and
the redis store's ``cluster`` option.
"""

from __future__ import annotations

import click
import pytest

from oblix.plugin import ConfigError, OblixError, parse_flag
from oblix_core.cli.common import parse_pairs

CLEAR_YES = ["1", "true", "TRUE", "True", "t", "yes", "Y", "y", "on", " on ", True, 1]
CLEAR_NO = ["0", "false", "False", "f", "no", "N", "off", " OFF", False, 0]
UNCLEAR = ["", " ", "enabled", "required", "local", "TRUE!", "true, false", "2", "yess", None, 2, 0.5]


@pytest.mark.parametrize("value", CLEAR_YES)
def test_clear_yes(value: object) -> None:
    assert parse_flag(value, "x") is True


@pytest.mark.parametrize("value", CLEAR_NO)
def test_clear_no(value: object) -> None:
    assert parse_flag(value, "x") is False


@pytest.mark.parametrize("value", UNCLEAR)
def test_unclear_values_are_refused_not_read_as_false(value: object) -> None:
    with pytest.raises(ConfigError, match=r"The thing must be true or false .* got "):
        parse_flag(value, "The thing", ConfigError)
    with pytest.raises(OblixError):
        parse_flag(value, "The thing")


def test_cli_pairs_read_booleans_in_any_case_and_local_only_as_a_flag() -> None:
    parsed = parse_pairs(["a=True", "b=FALSE", 'c="True"', "d=yes", "local_only=y"], "--filter")
    assert parsed == {"a": True, "b": False, "c": "True", "d": "yes", "local_only": True}
    assert parse_pairs(["local_only=off"], "--filter") == {"local_only": False}
    assert parse_pairs(['local_only="true"'], "--filter") == {"local_only": "true"}  # asked for the string
    with pytest.raises(click.BadParameter, match="local_only must be true or false"):
        parse_pairs(["local_only=enabled"], "--filter")


def test_redis_cluster_option_uses_the_same_rule() -> None:
    pytest.importorskip("redis")
    from oblix_redis.options import RedisOptions

    assert RedisOptions.parse(cluster="Y").cluster is True
    assert RedisOptions.parse(cluster="").cluster is False
    with pytest.raises(ConfigError, match="'cluster' must be true or false"):
        RedisOptions.parse(cluster="enabled")
