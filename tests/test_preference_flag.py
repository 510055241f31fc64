"""`--preference` on run/chat/server, and every hint that names a flag names one that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from oblix_core.cli.main import build_cli
from oblix_core.cli.run import ROUTING_FLAGS, model_options
from oblix_core.client import ROUTING_OPTIONS
from tests import cli_plugin
from tests.support import commands

TWO_MODELS = (
    '[[models]]\ntype = "scripted"\nname = "near"\n'
    '[[models]]\ntype = "scripted"\nname = "far"\nlocal = false\n'
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_plugin.install(tmp_path_factory.mktemp("preference-site"))


def _flags(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_preference_flag_steers_routing(site: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``oblix run`` in process (click's runner), the scripted models' plugin found by entry point."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (home / "config.toml").write_text(TWO_MODELS)
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "system")  # no connectivity verdict: the preference decides
    default = commands.invoke("run", "--json", "hi")
    assert default.exit_code == 0, (default.output, default.exception)
    assert json.loads(default.stdout)["model_id"] == "scripted:near"
    cloud = commands.invoke("run", "--preference", "cloud-first", "--json", "hi")
    assert cloud.exit_code == 0, (cloud.output, cloud.exception)
    result = json.loads(cloud.stdout)
    assert result["model_id"] == "scripted:far" and "cloud-first" in result["routing_decision"]["reason"]
    monkeypatch.delenv("OBLIX_DISABLE_PLUGINS")
    bad = commands.invoke("run", "--preference", "sideways", "hi")
    assert bad.exit_code == 2 and "local-first" in bad.stderr, (bad.output, bad.exception)


def test_run_chat_and_server_take_the_flag() -> None:
    cli = build_cli()
    for name in ("run", "chat", "server"):
        command = cli.get_command(click.Context(cli), name)
        assert command is not None and "--preference" in _flags(command), name


@pytest.mark.parametrize("key", ROUTING_OPTIONS)
def test_each_routing_option_hint_names_a_flag_that_exists(key: str) -> None:
    cli = build_cli()
    run = cli.get_command(click.Context(cli), "run")
    assert run is not None
    with pytest.raises(click.BadParameter) as caught:
        model_options(((key, "x"),), None, None)
    hint = caught.value.format_message()
    assert ROUTING_FLAGS[key] in hint
    named = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", ROUTING_FLAGS[key]))
    assert named <= _flags(run), f"{key}: {named - _flags(run)} are not flags of oblix run"
