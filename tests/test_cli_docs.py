"""``oblix docs`` and ``oblix run --docs``: the real command line, the real local embedder and
SQLite index; the answering models are the scripted test doubles of ``tests/cli_plugin.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from tests import cli_plugin
from tests.support import commands

pytest.importorskip("oblix_docs")

CONFIG = """
[routing]
preference = "cloud-first"

[[models]]
type = "scripted"
name = "cloudy"
local = false

[[models]]
type = "scripted"
name = "laptop"
local = true
"""


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "router.md").write_text("# Router\n\n## Reset\n\nHold the red button for 12 seconds.\n")
    (root / "cake.md").write_text("# Cake\n\nBake at 180 degrees for forty minutes.\n")
    (root / "draft.md").write_text("# Draft\n\nNot ready.\n")
    return root


def test_add_list_search_sync_and_remove(home: Path, notes: Path) -> None:
    added = commands.invoke("docs", "add", str(notes), "-w", "notes", "--exclude", "draft.*")
    assert added.exit_code == 0, added.output
    assert "2 added" in added.output
    listed = commands.invoke("docs", "list", "--json")
    (workspace,) = json.loads(listed.output)
    assert (workspace["name"], workspace["documents"], workspace["private"]) == ("notes", 2, False)
    found = commands.invoke(
        "docs", "search", "oven temperature for the cake", "-w", "notes", "-k", "1", "--json"
    )
    assert json.loads(found.output)[0]["doc_name"] == "cake.md"
    (notes / "cake.md").unlink()
    synced = commands.invoke("docs", "sync")
    assert "1 unchanged, 1 deleted" in synced.output
    removed = commands.invoke("docs", "rm", "router.md", "-w", "notes")
    assert removed.exit_code == 0 and "Removed router.md" in removed.output
    assert json.loads(commands.invoke("docs", "list", "-w", "notes", "--json").output) == []
    assert commands.invoke("docs", "rm", "notes").exit_code == 0
    assert json.loads(commands.invoke("docs", "list", "--json").output) == []


def test_bad_input_is_a_one_line_error(home: Path, notes: Path) -> None:
    empty = commands.invoke("docs", "search", "  ", "-w", "notes")
    assert empty.exit_code == 1 and "empty" in empty.output
    missing = commands.invoke("docs", "search", "x", "-w", "nowhere")
    assert missing.exit_code == 1 and "No workspace 'nowhere'" in missing.output


@pytest.mark.slow  # oblix processes and a model load each: seconds
def test_run_with_private_docs_answers_locally_with_sources(
    home: Path, notes: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    site = cli_plugin.install(tmp_path_factory.mktemp("docs-site"))
    (home / "config.toml").write_text(CONFIG)
    env = commands.environ(site, home)

    def oblix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "oblix_core", *args], env=env, capture_output=True, text=True, timeout=240
        )

    added = oblix("docs", "add", str(notes), "-w", "diary", "--private")
    assert added.returncode == 0, added.stderr
    private = oblix("run", "--docs", "diary", "--json", "How do I reset the router?")
    assert private.returncode == 0, private.stderr
    result = json.loads(private.stdout)
    assert result["model_id"] == "scripted:laptop"
    assert "private document workspace 'diary'" in result["routing_decision"]["local_only"]["reason"]
    assert result["sources"][0]["document"] == "router.md"
    printed = oblix("run", "--docs", "diary", "--no-stream", "How do I reset the router?")
    assert "Sources:\n  [1] router.md, line 5 (Router > Reset)" in printed.stderr
    plain = json.loads(oblix("run", "--json", "hello").stdout)
    assert plain["routing_decision"]["local_only"]["active"] is False and "sources" not in plain


@pytest.mark.slow  # oblix processes and a model load each: seconds
def test_chat_docs_draws_on_a_workspace_and_prints_sources(
    home: Path, notes: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``/docs W`` in ``oblix chat``, through a real pseudo-terminal (pexpect)."""
    site = cli_plugin.install(tmp_path_factory.mktemp("chat-docs-site"))
    cli_plugin.configure(home, "echo")
    env = commands.environ(site, home)
    added = subprocess.run(
        [sys.executable, "-m", "oblix_core", "docs", "add", str(notes), "-w", "notes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert added.returncode == 0, added.stderr
    chat = commands.spawn(env, "chat", timeout=120)
    chat.expect("you> ")
    chat.sendline("/docs nowhere")
    chat.expect("No workspace 'nowhere' \\(notes\\)")
    chat.sendline("/docs notes")
    chat.expect("Answers draw on workspace notes")
    chat.sendline("How do I reset the router?")
    chat.expect(r"Sources:\r\n  \[1\] router\.md, line 5 \(Router > Reset\)")
    chat.sendline("/docs off")
    chat.expect("no longer draw on documents")
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
