"""Template parameters (issue 33 item 4): a value for a parameter the template does not have
is an error naming the ones it has, before any model runs; the stdin order is as documented.
Through click's runner with the scripted ``echo`` model (a test double); the templates,
config.toml and the store are real."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli_run import calls, cli_home, oblix, plugin_site  # noqa: F401


def _sessions() -> int:
    return len(json.loads(oblix("sessions", "list", "--json").stdout))


def test_an_unknown_parameter_is_an_error_naming_the_known_ones(cli_home: Path) -> None:  # noqa: F811
    saved = oblix(
        "templates", "save", "summary", "Summarise in $words words ($tone): $input", "-p", "words", "50"
    )
    assert saved.exit_code == 0, saved.output
    before, sessions = len(calls()), _sessions()
    wrong = oblix("run", "-m", "echo", "-t", "summary", "x", "-p", "tone", "dry", "-p", "nope", "3")
    assert wrong.exit_code == 1
    assert "Template summary has no parameter $nope" in wrong.output
    assert "its parameters are words, tone" in wrong.output and "Traceback" not in wrong.output
    assert (len(calls()), _sessions()) == (before, sessions)  # no model ran, nothing stored
    own = oblix("run", "-m", "echo", "-t", "summary", "x", "-p", "input", "y", "-p", "tone", "dry")
    assert own.exit_code == 1 and "$input is the prompt itself" in own.output
    right = oblix("run", "-m", "echo", "-t", "summary", "x", "-p", "tone", "dry")
    assert right.stdout == "echo: Summarise in 50 words (dry): x\n"


def test_a_template_without_parameters_says_so(cli_home: Path) -> None:  # noqa: F811
    assert oblix("templates", "save", "plain", "Translate to French: $input").exit_code == 0
    wrong = oblix("run", "-m", "echo", "-t", "plain", "x", "-p", "lang", "fr")
    assert wrong.exit_code == 1 and "has no parameter $lang: it has no parameters" in wrong.output


def test_saving_a_default_for_an_unknown_parameter_writes_nothing(cli_home: Path) -> None:  # noqa: F811
    wrong = oblix("templates", "save", "sum", "Summarise in $words words", "-p", "wrods", "20")
    assert wrong.exit_code == 1 and "no parameter $wrods: its parameters are words" in wrong.output
    assert json.loads(oblix("templates", "list", "--json").stdout) == {}


def test_stdin_follows_the_prompt_after_a_blank_line(cli_home: Path) -> None:  # noqa: F811
    ran = oblix("run", "-m", "echo", "summarise this", stdin="the piped text\n")
    assert ran.stdout == "echo: summarise this\n\nthe piped text\n\n"
    assert calls()[-1].messages[-1].content == "summarise this\n\nthe piped text\n"  # type: ignore[attr-defined]
