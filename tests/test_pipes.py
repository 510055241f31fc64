"""Tables in a pipe and on a terminal (issue 33 item 2).

Piped (click's runner, which is no terminal, with ``COLUMNS=80``), ``oblix usage``,
``oblix plugins``, ``oblix models`` and ``oblix sessions list`` print a title, a header and
one line per row, every value whole on its row's line, however narrow ``COLUMNS`` is. On
a real pseudo-terminal 80 columns wide, no line is wider, ids and numbers are whole, and
the columns left out are named. The usage records and sessions come from requests to the
scripted backend (a test double); the ledger, the store, the plugins and the CLI are real.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from oblix_core.cli.tables import Column, fit_columns, plain_table
from oblix_core.client import OblixClient
from oblix_core.testing import ScriptedPlugin
from tests.conftest import FAST
from tests.support import commands

LONG_TITLE = "Planning the vegetable garden for the spring and the summer, with a watering schedule"
METADATA = {"category": "gardening_and_outdoor_projects", "priority": "medium", "budget_usd": 0.25}
ENDPOINT = "http://127.0.0.1:9/v1/a/rather/long/path/to/an/openai/compatible/endpoint"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _usd(value: float) -> str:
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


@pytest.fixture(scope="module")
def filled_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with usage records (tiny cloud costs such as $0.0000xx), two sessions (one with
    a long title and metadata) and a configured model on a long endpoint."""
    import anyio

    home = tmp_path_factory.mktemp("pipes") / "home"
    home.mkdir()

    async def fill() -> None:
        async with OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST) as client:
            await client.hook_model("scripted", "tiny", local=True)
            await client.hook_model("scripted", "gpt-4o-mini", local=False)
            sid = await client.create_session(title=LONG_TITLE, metadata=METADATA)
            await client.execute("a local question", session_id=sid, stream=False)
            await client.execute("a cloud question", model="scripted:gpt-4o-mini", stream=False)

    anyio.run(fill)
    (home / "config.toml").write_text(
        f'[[models]]\ntype = "openai"\nname = "a-self-hosted-model-with-a-long-name"\n'
        f'endpoint = "{ENDPOINT}"\ncontext_window = 32768\nlocal = true\n'
    )
    yield home


@pytest.fixture
def piped(filled_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OBLIX_HOME", str(filled_home))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    return filled_home


def _ok(*args: str) -> Result:
    result = commands.invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def _row(stdout: str, first: str) -> str:
    """The one line whose first value is ``first``."""
    found = [line for line in stdout.splitlines() if line.split("  ")[0].strip() == first]
    assert len(found) == 1, stdout
    return found[0]


# -- the plain form and the fitting, on their own ----------------------------------------------


def test_plain_table_aligns_whole_values_one_row_a_line() -> None:
    columns = [Column("name"), Column("cost", right=True), "note"]
    rows = [("a", "$0.000051", "two\nlines"), ("a-much-longer-name", "$12.50", ""), ("b", None, "x")]
    assert plain_table("Title", columns, rows).splitlines() == [
        "Title",
        "name                     cost  note",
        "a                   $0.000051  two lines",
        "a-much-longer-name     $12.50  -",
        "b                           -  x",
    ]


def test_a_narrow_terminal_loses_the_least_useful_columns_and_splits_no_word() -> None:
    columns = [
        Column("id", keep=100),
        Column("cost", keep=70, right=True),
        Column("path", keep=10),
        Column("note", keep=50, wraps=True),
    ]
    cells = [["5f3e9a7b-6c1d", "$0.000051", "/a/long/path/to/a/model.gguf", "a note of several words"]]
    assert fit_columns(columns, cells, 200) == {0: 13, 1: 9, 2: 28, 3: 23}
    narrow = fit_columns(columns, cells, 40)  # the path goes; the note wraps between words
    assert narrow == {0: 13, 1: 9, 3: 40 - 13 - 9 - 2 * 2}
    assert fit_columns(columns, cells, 24) == {0: 13, 1: 9}  # "several" would not fit whole
    assert fit_columns(columns, cells, 5) == {0: 13}  # the first column always stays


# -- piped, at COLUMNS=80 ------------------------------------------------------------------------


def test_piped_usage_keeps_every_amount_whole(piped: Path) -> None:
    report = json.loads(_ok("usage", "--by", "model", "--json").stdout)
    out = _ok("usage", "--by", "model").stdout
    assert len(out.splitlines()) == 2 + len(report["rows"]) + 1  # title, header, rows, total
    tiny = [r for r in report["rows"] if 0 < r["cost_usd"] < 0.0001]
    assert tiny, report  # the case the issue saw split: $0.0000xx
    for row in [*report["rows"], report["total"]]:
        line = _row(out, row["key"])
        for value in (_usd(row["cost_usd"]), _usd(row["saved_usd"]), str(row["input_tokens"])):
            assert value in line.split(), (value, line)
    assert max(len(line) for line in out.splitlines()) > 80  # nothing was wrapped to fit


def test_piped_plugins_keep_every_hook_name_whole(piped: Path) -> None:
    found = json.loads(_ok("plugins", "--json").stdout)
    out = _ok("plugins").stdout
    loaded = [p for p in found if p["status"] == "loaded"]
    assert any(len(", ".join(p["hooks"])) > 25 for p in loaded)
    for plugin in loaded:
        line = _row(out[: out.index("Session stores")], plugin["name"])
        assert line.endswith(", ".join(plugin["hooks"])), line
    stores = out[out.index("Session stores") :]
    assert re.search(rf"^file +file +yes +root={re.escape(str(piped))}/sessions$", stores, re.M), stores


def test_piped_models_keep_the_endpoint_whole(piped: Path) -> None:
    out = _ok("models").stdout
    line = _row(out, "openai:a-self-hosted-model-with-a-long-name")
    assert line.split() == [
        "openai:a-self-hosted-model-with-a-long-name",
        "local",
        "32768",
        ENDPOINT,
        "ready",
    ]


def test_piped_sessions_list_has_the_whole_title_and_metadata_on_the_id_line(piped: Path) -> None:
    found = json.loads(_ok("sessions", "list", "--json").stdout)
    out = _ok("sessions", "list").stdout
    assert out.splitlines()[1].split() == ["id", "updated", "msgs", "title", "metadata"]
    assert len(out.splitlines()) == 2 + len(found)
    garden = next(s for s in found if s["title"] == LONG_TITLE)
    line = _row(out, garden["id"])
    assert LONG_TITLE in line
    assert line.endswith("category=gardening_and_outdoor_projects priority=medium budget_usd=0.25")
    searched = _ok("sessions", "search", "vegetable").stdout
    assert LONG_TITLE in _row(searched, garden["id"])


# -- on a terminal 80 columns wide -----------------------------------------------------------------


def _on_terminal(home: Path, *args: str) -> list[str]:
    """``oblix ARGS`` on a pseudo-terminal of 40 x 80; the lines it printed, colours removed."""
    import pexpect

    env = {k: v for k, v in commands.environ(None, home).items() if k not in ("COLUMNS", "TTY_COMPATIBLE")}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "oblix_core", *args],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 80),
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return [ANSI.sub("", line).rstrip() for line in (child.before or "").splitlines()]


def test_on_a_terminal_tables_fit_80_columns_with_numbers_and_ids_whole(filled_home: Path) -> None:
    os.environ.pop("TTY_COMPATIBLE", None)
    usage = _on_terminal(filled_home, "usage", "--by", "model")
    assert max(len(line) for line in usage) <= 80
    report: dict[str, Any] = json.loads(
        commands.oblix(None, filled_home, "usage", "--by", "model", "--json").stdout
    )
    for row in [*report["rows"], report["total"]]:
        line = next(line for line in usage if line.startswith(row["key"]))
        assert str(row["requests"]) in line.split() and _usd(row["cost_usd"]) in line.split(), line
    assert any(line.startswith("Not shown at 80 columns:") for line in usage)  # some had to go
    plugins = _on_terminal(filled_home, "plugins")
    assert max(len(line) for line in plugins) <= 80
    hooks = {
        h
        for p in json.loads(commands.oblix(None, filled_home, "plugins", "--json").stdout)
        for h in p.get("hooks", [])
    }
    hidden = " ".join(line for line in plugins if line.startswith("Not shown at 80 columns:"))
    for hook in set() if "hooks" in hidden else hooks:  # each whole on some line: none split
        assert any(re.search(rf"(^|\s){hook}(,|\s|$)", line) for line in plugins), (hook, plugins)
    listed = _on_terminal(filled_home, "sessions", "list")
    assert max(len(line) for line in listed) <= 80
    ids = [
        s["id"] for s in json.loads(commands.oblix(None, filled_home, "sessions", "list", "--json").stdout)
    ]
    assert all(any(line.startswith(i) for line in listed) for i in ids), listed


@pytest.mark.timeout(120)
def test_piped_agents_watch_prints_the_plain_table_again_and_again(filled_home: Path) -> None:
    import signal
    import subprocess

    env = commands.environ(None, filled_home, COLUMNS="80")
    run = [sys.executable, "-m", "oblix_core", "agents", "--watch"]
    with subprocess.Popen(run, env=env, stdout=subprocess.PIPE, text=True) as watching:
        assert watching.stdout is not None
        lines: list[str] = []
        try:
            for line in watching.stdout:
                lines.append(line.rstrip("\n"))
                if sum(x.startswith("Agents at ") for x in lines) == 2 and line.startswith(
                    "resource_monitor"
                ):
                    break
        finally:
            watching.send_signal(signal.SIGINT)
            watching.wait(timeout=60)
    assert [x.split() for x in lines].count(["agent", "state", "target", "reason"]) == 2, lines
    assert [x.split()[0] for x in lines if x.startswith("resource_monitor")] == ["resource_monitor"] * 2
