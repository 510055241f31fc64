"""The ``oblix`` command line (sessions, plugins, version)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from oblix_core import __version__
from oblix_core.cli import build_cli

DATA = Path(__file__).parent / "data"
REF_ID = "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def test_version_and_plugins(home: Path) -> None:
    assert run("--version") == (0, f"oblix, version {__version__}\n")
    code, out = run("plugins", "--json")
    assert code == 0 and "file" in {p["name"] for p in json.loads(out)}
    code, out = run("plugins")
    assert code == 0 and "oblix_register_session_stores" in out


def test_sessions_commands(home: Path, tmp_path: Path) -> None:
    code, out = run("sessions", "import", str(DATA / "reference_session.json"))
    assert (code, out.strip()) == (0, REF_ID)
    code, out = run("sessions", "list", "--json", "--filter", "category=technical_support")
    assert code == 0 and [s["id"] for s in json.loads(out)] == [REF_ID]
    code, out = run("sessions", "list")
    assert code == 0 and "Technical Support" in out
    code, out = run("sessions", "show", REF_ID)
    assert code == 0 and "I'm using Windows 11." in out
    code, out = run("sessions", "show", REF_ID, "--json")
    assert json.loads(out)["messages"][0]["id"] == "msg_1"
    code, copy_id = run("sessions", "copy", REF_ID, "--title", "copy")
    assert code == 0
    code, merged = run("sessions", "merge", REF_ID, copy_id.strip(), "--title", "both", "--json")
    assert code == 0
    code, out = run("sessions", "show", json.loads(merged)["session_id"], "--json")
    assert len(json.loads(out)["messages"]) == 6
    target = tmp_path / "export.json"
    code, _ = run("sessions", "export", REF_ID, str(target))
    assert code == 0 and json.loads(target.read_text())["format_version"] == 1
    assert run("sessions", "delete", REF_ID)[0] == 0
    code, out = run("sessions", "delete", REF_ID)
    assert code == 1 and "No session" in out


def test_errors_are_one_line_messages(home: Path, tmp_path: Path) -> None:
    code, out = run("sessions", "show", "../../etc/passwd")
    assert code == 1 and "Invalid session id" in out and "Traceback" not in out
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, out = run("sessions", "import", str(bad))
    assert code == 1 and "not valid JSON" in out
    code, out = run("sessions", "list", "--filter", "nokeyvalue")
    assert code == 2 and "KEY=VALUE" in out
