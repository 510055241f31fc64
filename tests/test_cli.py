"""The ``oblix`` command line (sessions, plugins, version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oblix_core import __version__
from tests.support import commands

DATA = Path(__file__).parent / "data"
REF_ID = "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"


def run(*args: str) -> tuple[int, str]:
    result = commands.invoke(*args)
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


def variant(tmp_path: Path, session_id: str, **changes: object) -> Path:
    """The reference session under another id, with some fields changed, as an import file."""
    data = json.loads((DATA / "reference_session.json").read_text())
    data.update(id=session_id, **changes)
    path = tmp_path / f"{session_id}.json"
    path.write_text(json.dumps(data))
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_filter_values_are_json_scalars(home: Path, tmp_path: Path) -> None:
    run("sessions", "import", str(variant(tmp_path, "private-1", metadata={"local_only": True, "n": 3})))
    run("sessions", "import", str(variant(tmp_path, "stringy-1", metadata={"local_only": "true"})))
    both = {"private-1", "stringy-1"}  # local_only=true asks "is it local-only?": "true" is too
    for value, expected in (("true", both), ('"true"', {"stringy-1"}), ("TRUE", both), ("no", set())):
        code, out = run("sessions", "list", "--json", "--filter", f"local_only={value}")
        assert code == 0 and {s["id"] for s in json.loads(out)} == expected, value
    code, out = run("sessions", "list", "--json", "--filter", "n=3")
    assert [s["id"] for s in json.loads(out)] == ["private-1"]


def test_ids_may_be_shortened_to_a_unique_start(home: Path, tmp_path: Path) -> None:
    run("sessions", "import", str(DATA / "reference_session.json"))
    twin = REF_ID[:-1] + "b"
    run("sessions", "import", str(variant(tmp_path, twin, title="Twin")))
    code, out = run("sessions", "show", REF_ID[:12])
    assert code == 1 and "matches 2 sessions" in out and "type more of it" in out
    code, out = run("sessions", "show", REF_ID[:-1] + "a", "--json")
    assert code == 0 and json.loads(out)["id"] == REF_ID
    code, out = run("sessions", "copy", twin[-30:])  # not a start: no match
    assert code == 1 and "No session" in out
    target = tmp_path / "out.json"
    assert run("sessions", "export", twin[:-1] + "b", str(target))[0] == 0
    code, out = run("sessions", "delete", twin, "--json")
    assert code == 0 and json.loads(out) == {"session_id": twin}
    code, out = run("sessions", "show", REF_ID[:8], "--json")  # unique again
    assert code == 0 and json.loads(out)["id"] == REF_ID


def test_deleting_a_missing_session_creates_nothing(home: Path) -> None:
    run("sessions", "list")  # let the store create what it needs once
    before = tree(home)
    code, out = run("sessions", "delete", "0123456789abcdef")
    assert code == 1 and "No session 0123456789abcdef" in out
    assert tree(home) == before


def test_tables_never_truncate_ids(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("sessions", "import", str(DATA / "reference_session.json"))
    monkeypatch.setenv("COLUMNS", "60")
    code, out = run("sessions", "list")
    assert code == 0 and REF_ID in out
    code, out = run("sessions", "search", "windows")
    assert code == 0 and REF_ID in out


def test_search_and_show_last(home: Path, tmp_path: Path) -> None:
    run("sessions", "import", str(DATA / "reference_session.json"))
    other = variant(tmp_path, "other-1", title="Garden plans", messages=[])
    run("sessions", "import", str(other))
    code, out = run("sessions", "search", "WINDOWS 11", "--json")
    found = json.loads(out)
    assert code == 0 and [s["id"] for s in found] == [REF_ID]
    assert "Windows 11" in found[0]["snippet"] and found[0]["message_count"] == 3
    code, out = run("sessions", "search", "garden", "--json")
    assert [s["id"] for s in json.loads(out)] == ["other-1"]
    assert json.loads(run("sessions", "search", "nothing like this", "--json")[1]) == []
    code, out = run("sessions", "show", REF_ID[:8], "--last")
    assert (code, out) == (0, "I'm sorry to hear that. What operating system are you using?\n")
    code, out = run("sessions", "show", REF_ID, "--last", "--json")
    assert json.loads(out)["id"] == "msg_2"
    code, out = run("sessions", "show", "other-1", "--last")
    assert code == 1 and "has no answer yet" in out


def test_import_of_an_existing_session_names_the_cli_flag(home: Path) -> None:
    run("sessions", "import", str(DATA / "reference_session.json"))
    code, out = run("sessions", "import", str(DATA / "reference_session.json"))
    assert code == 1 and "--new-id" in out and "new_id=True" not in out


def test_global_store_options_override_the_config(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text('[sessions]\nstore = "file"\noptions = { root = "/nonexistent/x" }\n')
    elsewhere = tmp_path / "elsewhere"
    code, out = run(
        "--store-option", f"root={elsewhere}", "sessions", "import", str(DATA / "reference_session.json")
    )
    assert code == 0 and (elsewhere / REF_ID).is_dir()
    code, out = run("--store", "file", "--store-option", f"root={elsewhere}", "sessions", "list", "--json")
    assert [s["id"] for s in json.loads(out)] == [REF_ID]
    code, out = run("--store", "nosuch", "sessions", "list")
    assert code == 1 and "No session store named 'nosuch'" in out and "file" in out
    code, out = run("--store-option", "rootless", "sessions", "list")
    assert code == 2 and "KEY=VALUE" in out
    code, out = run("--store-option", f"root={elsewhere}", "plugins", "--json")
    file_plugin = next(p for p in json.loads(out) if p["name"] == "file")
    assert file_plugin["stores"] == [
        {"store": "file", "in_use": True, "where": {"name": "file", "root": str(elsewhere)}}
    ]


def test_plugins_shows_each_store_and_where_it_keeps_data(home: Path) -> None:
    code, out = run("plugins")
    assert code == 0 and "Session stores" in out and f"root={home / 'sessions'}" in out
    stores = {s["store"] for p in json.loads(run("plugins", "--json")[1]) for s in p["stores"]}
    assert {"file", "redis", "s3"} <= stores


def test_migrate_copies_once_and_reports_conflicts(home: Path, tmp_path: Path) -> None:
    run("sessions", "import", str(DATA / "reference_session.json"))
    run("sessions", "import", str(variant(tmp_path, "second-1", title="Second")))
    target = tmp_path / "target"
    code, out = run("sessions", "migrate", "--to", "file", "--to-option", f"root={target}", "--json")
    expected = {"copied": 2, "updated": 0, "skipped": 0, "conflicts": [], "failed": {}}
    expected["conflict_reasons"] = {}
    assert (code, json.loads(out)) == (0, expected)
    code, out = run("sessions", "migrate", "--to", "file", "--to-option", f"root={target}")
    assert code == 0 and "0 copied, 2 already there (skipped), 0 conflicts, 0 failed" in out
    code, out = run("--store-option", f"root={target}", "sessions", "show", "second-1", "--json")
    assert json.loads(out) == json.loads(run("sessions", "show", "second-1", "--json")[1])
    run("sessions", "delete", "second-1")
    run("sessions", "import", str(variant(tmp_path, "second-1", title="Changed")))
    code, out = run("sessions", "migrate", "--to", "file", "--to-option", f"root={target}")
    assert code == 1 and "1 conflicts" in out and "conflict: second-1" in out
    code, out = run("--store-option", f"root={target}", "sessions", "show", "second-1", "--json")
    assert json.loads(out)["title"] == "Second"  # never overwritten
    code, out = run("sessions", "migrate", "--to", "file")
    assert code == 1 and "already in" in out


def test_read_only_home_serves_reads_and_refuses_writes_clearly(home: Path, tmp_path: Path) -> None:
    """A real process on a home it cannot write (file modes; root drops CAP_DAC_OVERRIDE)."""
    run("sessions", "import", str(DATA / "reference_session.json"))
    prefix = []
    if os.geteuid() == 0:  # root ignores file modes unless it drops CAP_DAC_OVERRIDE
        prefix = ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override", "--"]
    paths = [home, *home.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = os.environ | {"OBLIX_HOME": str(home), "OBLIX_DISABLE_PLUGINS": "llama_cpp"}

    def oblix(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*prefix, sys.executable, "-m", "oblix_core", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    try:
        for args in (("sessions", "list"), ("sessions", "show", REF_ID[:8]), ("plugins",), ("models",)):
            done = oblix(*args)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
        assert REF_ID in oblix("sessions", "search", "windows").stdout
        for args in (("sessions", "import", "--new-id", str(DATA / "reference_session.json")),
                     ("sessions", "delete", REF_ID), ("sessions", "copy", REF_ID)):  # fmt: skip
            done = oblix(*args)
            assert done.returncode == 1, (args, done.stdout)
            assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr, done.stderr
            assert "ermission denied" in done.stderr or "ead-only" in done.stderr, done.stderr
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
