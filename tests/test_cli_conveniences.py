"""Everyday conveniences of the command line (issue 19 items 1, 8, 9).

Pipes (``-`` for stdin/stdout, exports to a pipe), ``sessions show --last`` without an
id, ``run -u``, ``models default``, ``aliases set``, per-model generation defaults,
prompt templates, the ``sessions list`` table, delete confirmation. The CLI runs through
click's runner (``tests/test_cli_run.py``'s ``oblix``) or as a subprocess without a
terminal (``tests/cli_plugin.py``); the scripted models are test doubles, the store
and config.toml are real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import cli_plugin
from tests.support import commands
from tests.test_cli_run import calls, cli_home, oblix, plugin_site, session_of  # noqa: F401

DATA = Path(__file__).parent / "data"
REF_ID = "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"


def _imported(home: Path) -> str:
    result = oblix("sessions", "import", str(DATA / "reference_session.json"))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# -- item 1: pipes ---------------------------------------------------------------------------


def test_export_dash_writes_the_json_to_stdout_and_import_dash_reads_stdin(home: Path) -> None:
    _imported(home)
    exported = oblix("sessions", "export", REF_ID[:8], "-")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["id"] == REF_ID  # stdout holds only the document
    assert not (Path.cwd() / "-").exists()
    assert oblix("sessions", "delete", REF_ID, "-y").exit_code == 0
    imported = oblix("sessions", "import", "-", stdin=exported.stdout)
    assert (imported.exit_code, imported.stdout.strip()) == (0, REF_ID)
    again = oblix("sessions", "import", "-", "--new-id", stdin=exported.stdout)
    assert again.exit_code == 0 and again.stdout.strip() != REF_ID
    bad = oblix("sessions", "import", "-", stdin="{")
    assert bad.exit_code == 1 and "stdin" in bad.output
    both = oblix("sessions", "export", REF_ID, "-", "--json")
    assert both.exit_code == 2 and "--json" in both.output


def test_export_to_dev_stdout_and_a_fifo_in_a_real_process(
    home: Path,
    plugin_site: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _imported(home)
    piped = commands.oblix(plugin_site, home, "sessions", "export", REF_ID, "/dev/stdout")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["id"] == REF_ID
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = commands.environ(plugin_site, home)
    writer = subprocess.Popen(
        [sys.executable, "-m", "oblix_core", "sessions", "export", REF_ID, str(fifo)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(fifo, encoding="utf-8") as reader:
        assert json.loads(reader.read())["id"] == REF_ID
    assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
    assert fifo.exists() and not fifo.is_file()  # the pipe is still a pipe, not replaced by a file
    restored = commands.oblix(plugin_site, home, "sessions", "import", "-", "--new-id", stdin=piped.stdout)
    assert restored.returncode == 0, restored.stderr


def test_the_sdk_still_refuses_to_replace_a_device(home: Path, tmp_path: Path) -> None:
    import anyio

    from oblix_core.client import OblixClient
    from oblix_core.errors import OblixError

    _imported(home)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    client = OblixClient()
    with pytest.raises(OblixError, match="not a regular file"):
        anyio.run(client.export_session, REF_ID, str(fifo))
    client.store.close()


# -- item 9: sessions list at 80 columns, delete confirmation --------------------------------


def test_relative_times_titles_and_metadata_text() -> None:
    from datetime import UTC, datetime

    from oblix_core.cli.tables import cut_title, metadata_text, relative_time

    now = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
    assert relative_time("2024-05-10T11:59:30Z", now) == "just now"
    assert relative_time("2024-05-10T11:55:00+00:00", now) == "5m ago"
    assert relative_time("2024-05-10T09:00:00Z", now) == "3h ago"
    assert relative_time("2024-05-08T12:00:00Z", now) == "2d ago"
    assert relative_time("2024-03-01T12:00:00Z", now) == "2024-03-01"
    assert (
        cut_title("Planning the garden for the spring and the summer", 30) == "Planning the garden for the…"
    )
    assert cut_title("short", 30) == "short"
    assert cut_title("line\nbreaks   collapse", 30) == "line breaks collapse"
    assert metadata_text({"category": "demo", "local_only": True, "n": 3}) == (
        "category=demo local_only=true n=3"
    )


@pytest.mark.parametrize("columns", ["80", "100"])
def test_sessions_list_fits_80_to_100_columns(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    doc = json.loads((DATA / "reference_session.json").read_text())
    doc["title"] = "A long title about troubleshooting a laptop that will not start after an update"
    (tmp_path / "s.json").write_text(json.dumps(doc))
    assert oblix("sessions", "import", str(tmp_path / "s.json")).exit_code == 0
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # the terminal's table (a pipe's: tests/test_pipes.py)
    listed = oblix("sessions", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert all(len(line) <= int(columns) for line in lines)
    row = next(line for line in lines if REF_ID in line)  # the id whole, on one line
    assert re.search(r"\d{4}-\d\d-\d\d |\d[mhd] ago", row)  # the time on the id's line, whole
    assert "category=technical_support" in listed.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    assert "…" in listed.stdout and "T10:" not in listed.stdout  # title cut; no ISO timestamps


def test_show_without_an_id_shows_the_latest_session(cli_home: Path) -> None:  # noqa: F811
    none_yet = oblix("sessions", "show", "--last")
    assert none_yet.exit_code == 1 and "no session yet" in none_yet.output
    session_of(oblix("run", "-m", "echo", "first"))
    latest = session_of(oblix("run", "-m", "echo", "second"))
    shown = oblix("sessions", "show", "--last")
    assert (shown.exit_code, shown.stdout) == (0, "echo: second\n")
    whole = oblix("sessions", "show", "--json")
    assert json.loads(whole.stdout)["id"] == latest
    empty = oblix("sessions", "create", "--title", "nothing asked yet", "--json")
    assert empty.exit_code == 0
    still = oblix("sessions", "show", "--last")  # the newest session has no answer: the newest answer
    assert (still.exit_code, still.stdout) == (0, "echo: second\n")


def test_deleting_by_a_start_of_the_id_asks_on_a_terminal(home: Path, plugin_site: Path) -> None:  # noqa: F811
    import pexpect

    _imported(home)

    def delete(*args: str) -> pexpect.spawn:
        return commands.spawn(commands.environ(plugin_site, home), "sessions", "delete", *args, timeout=60)

    child = delete(REF_ID[:6])
    child.expect(rf"Delete session {REF_ID} \(Technical Support")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and oblix("sessions", "show", REF_ID).exit_code == 0
    child = delete(REF_ID[:6])
    child.expect("Delete session")
    child.sendline("y")
    child.expect(f"Deleted {REF_ID}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    _imported(home)
    child = delete(REF_ID[:6], "-y")  # -y: no question
    child.expect(f"Deleted {REF_ID}")
    child.expect(pexpect.EOF)
    _imported(home)
    child = delete(REF_ID)  # the whole id: no question
    child.expect(f"Deleted {REF_ID}")
    child.expect(pexpect.EOF)


BLOCKED_RUN = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ollama", "anthropic"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.argv = ["oblix", *sys.argv[1:]]
from oblix_core.cli.main import main
main()
"""


def test_models_lists_only_backends_whose_packages_import(home: Path, plugin_site: Path) -> None:  # noqa: F811
    cli_plugin.configure(home, "echo")
    env = commands.environ(plugin_site, home)

    def blocked(*args: str) -> subprocess.CompletedProcess[str]:
        run = [sys.executable, "-c", BLOCKED_RUN, *args]
        return subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)

    listed = blocked("models", "--json")
    assert listed.returncode == 0, listed.stderr
    backends = json.loads(listed.stdout)["backends"]
    assert "scripted" in backends and "openai" in backends
    assert not {"ollama", "claude", "anthropic"} & set(backends)
    table = blocked("models")
    installed = table.stdout.split("Backends installed:")[1]
    assert "openai" in installed and "ollama" not in installed and "claude" not in installed
    plugins = json.loads(blocked("plugins", "--json").stdout)
    ollama = next(p for p in plugins if p["name"] == "ollama")
    assert ollama["status"] == "not installed" and ollama["install"] == "pip install 'oblix[ollama]'"


def test_the_redis_store_names_its_options_when_given_an_unknown_one(home: Path) -> None:
    result = oblix("--store", "redis", "--store-option", "urll=redis://127.0.0.1:1/0", "sessions", "list")
    assert result.exit_code == 1
    assert "unknown option(s)" in result.output.lower() and "urll" in result.output
    for name in (
        "url",
        "prefix",
        "cluster",
        "ttl",
        "timeout",
        "retry_window",
        "wait_replicas",
        "wait_timeout",
    ):
        assert name in result.output.split("Accepted:")[1]


def test_ctrl_d_after_new_prints_the_new_sessions_id(home: Path, plugin_site: Path) -> None:  # noqa: F811
    from tests.test_chat_pty import finish, spawn

    cli_plugin.configure(home, "echo")
    chat = spawn(plugin_site, home, "chat")
    chat.expect("you> ")
    chat.sendline("first")
    chat.expect("echo: first")
    chat.expect("you> ")
    chat.sendline("/new")
    chat.expect("New session")
    chat.expect("you> ")
    chat.sendline("second")
    chat.expect("echo: second")
    chat.expect("you> ")
    chat.sendeof()
    chat.expect(r"Chat ended\. Session: (\S+)")
    ended = chat.match.group(1)
    status, _ = finish(chat)
    assert status == 0
    latest = json.loads(commands.oblix(plugin_site, home, "sessions", "list", "--json").stdout)
    assert ended == latest[0]["id"] and latest[0]["message_count"] == 2 and len(latest) == 2
    chat = spawn(plugin_site, home, "chat", "-c")
    chat.expect("Type /help")
    chat.expect("ai> echo: second")  # the resumed session's last turns, then the prompt
    chat.expect("you> ")
    chat.sendline("/new")
    chat.expect("New session")
    chat.expect("you> ")
    chat.sendeof()
    chat.expect("The new session stored nothing; the session before it:")
    chat.expect(rf"Chat ended\. Session: {ended}")
    assert finish(chat)[0] == 0


# -- item 8: llm's daily conveniences ---------------------------------------------------------


def test_run_u_prints_the_token_usage_on_stderr(cli_home: Path) -> None:  # noqa: F811
    plain = oblix("run", "-m", "echo", "hello there")
    assert "Token usage" not in plain.stderr
    used = oblix("run", "-m", "echo", "-u", "hello there")
    assert used.exit_code == 0, used.output
    assert used.stdout == "echo: hello there\n"  # stdout keeps only the answer
    line = next(x for x in used.stderr.splitlines() if x.startswith("Token usage: "))
    metrics = json.loads(oblix("run", "-m", "echo", "--json", "hello there").stdout)["metrics"]
    assert f"{metrics['input_tokens']} input, {metrics['output_tokens']} output" in line


def test_aliases_and_the_default_model_are_written_to_config_keeping_comments(cli_home: Path) -> None:  # noqa: F811
    config = cli_home / "config.toml"
    config.write_text("# my models, hand-written\n" + config.read_text())
    done = oblix("aliases", "set", "quick", "scripted:echo")
    assert done.exit_code == 0, done.output
    assert oblix("aliases", "list", "--json").stdout.strip() == json.dumps(
        {"quick": "scripted:echo"}, indent=2
    )
    assert session_of(oblix("run", "-m", "quick", "via alias"))
    assert calls()[-1].messages[-1].content == "via alias"
    done = oblix("models", "default", "quick")
    assert done.exit_code == 0, done.output
    assert oblix("models", "default").stdout.strip() == "quick"
    answered = oblix("run", "--json", "no -m given")  # the default goes first (slow would too)
    assert json.loads(answered.stdout)["model_id"] == "scripted:echo"
    decision = json.loads(answered.stdout)["routing_decision"]
    assert decision["candidates"][0] == "scripted:echo" and len(decision["candidates"]) == 2  # fallback
    assert json.loads(oblix("run", "--json", "-m", "slow", "x").stdout)["model_id"] == "scripted:slow"
    text = config.read_text()
    assert text.startswith("# my models, hand-written\n") and 'default_model = "quick"' in text
    assert oblix("models", "default", "--clear").exit_code == 0
    assert "default_model" not in config.read_text()
    assert oblix("aliases", "remove", "quick").exit_code == 0
    gone = oblix("run", "-m", "quick", "x")
    assert gone.exit_code == 1 and "quick" in gone.output
    bad = oblix("aliases", "set", "a:b", "scripted:echo")
    assert bad.exit_code == 2 and "NAME" in bad.output


def test_a_default_model_that_is_gone_names_the_commands_that_fix_it(cli_home: Path) -> None:  # noqa: F811
    assert oblix("models", "default", "nosuch").exit_code == 0  # a note, not an error: it may come later
    failed = oblix("run", "hello")
    assert failed.exit_code == 1 and "default model nosuch" in failed.output
    assert "oblix models default --clear" in failed.output and "--model" not in failed.output


def test_invalid_config_changes_are_refused_and_leave_the_file_alone(cli_home: Path) -> None:  # noqa: F811
    config = cli_home / "config.toml"
    before = config.read_text()
    refused = oblix("aliases", "set", "empty", " ")
    assert refused.exit_code == 1 and "[aliases]" in refused.output
    assert config.read_text() == before


def test_generation_defaults_per_model_apply_when_a_request_sets_none(cli_home: Path) -> None:  # noqa: F811
    assert oblix("models", "options", "set", "echo", "temperature", "0.3").exit_code == 0
    assert oblix("models", "options", "set", "scripted:echo", "stop", '["END"]').exit_code == 0
    assert oblix("models", "options", "set", "echo", "max_tokens", "64").exit_code == 0
    shown = json.loads(oblix("models", "options", "show", "--json").stdout)
    assert shown["scripted:echo"] == {"temperature": 0.3, "stop": ["END"], "max_tokens": 64}
    assert shown["scripted:slow"] == {}
    assert oblix("run", "-m", "echo", "defaults apply").exit_code == 0
    request = calls()[-1]
    assert (request.temperature, request.max_tokens, request.options) == (0.3, 64, {"stop": ["END"]})
    assert (
        oblix("run", "-m", "echo", "--temperature", "0.9", "-o", "stop", "X", "request wins").exit_code == 0
    )
    request = calls()[-1]
    assert (request.temperature, request.max_tokens, request.options) == (0.9, 64, {"stop": "X"})
    assert oblix("models", "options", "clear", "echo", "stop").exit_code == 0
    assert oblix("models", "options", "clear", "echo").exit_code == 0
    assert "defaults" not in (cli_home / "config.toml").read_text()
    missing = oblix("models", "options", "set", "nosuch", "temperature", "1")
    assert missing.exit_code == 1 and "scripted:echo" in missing.output
    (cli_home / "config.toml").write_text(
        '[[models]]\ntype = "scripted"\nname = "echo"\ndefaults = { temperature = 0.1 }\n'
    )
    assert oblix("run", "-m", "echo", "from the file").exit_code == 0
    assert calls()[-1].temperature == 0.1


def test_options_set_writes_out_the_embedded_defaults_first(home: Path) -> None:
    done = oblix("models", "options", "set", "gemma-3-270m", "temperature", "0.5")
    assert done.exit_code == 0, done.output
    assert "now lists the default models" in done.stderr
    text = (home / "config.toml").read_text()
    assert 'type = "llama_cpp"' in text and 'name = "gemma-3-270m"' in text and "temperature = 0.5" in text


def test_a_backend_refuses_defaults_it_cannot_take() -> None:
    from oblix_core.errors import ConfigError
    from oblix_core.models.backend import ModelBackend

    class Strict(ModelBackend):
        model_type = "strict"
        request_options = frozenset({"top_p"})

    assert Strict("m", defaults={"top_p": 0.5, "temperature": 1}).generation_defaults["top_p"] == 0.5
    with pytest.raises(ConfigError, match="seed not an option of strict"):
        Strict("m", defaults={"seed": 1})


def test_templates_save_list_show_and_run(cli_home: Path) -> None:  # noqa: F811
    saved = oblix("templates", "save", "sum", "Summarise in $words words: $input", "-p", "words", "20")
    assert saved.exit_code == 0 and "parameters: words" in saved.output
    assert oblix(
        "templates", "save", "fr", "-s", "Answer in $lang.", "-m", "echo", "-o", "temperature", "0.4"
    )
    listed = oblix("templates", "list", "--json")
    assert set(json.loads(listed.stdout)) == {"sum", "fr"}
    shown = oblix("templates", "show", "sum")
    assert 'prompt = "Summarise in $words words: $input"' in shown.stdout and "words = 20" in shown.stdout
    ran = oblix("run", "-m", "echo", "-t", "sum", "the text")
    assert ran.stdout == "echo: Summarise in 20 words: the text\n"
    ran = oblix("run", "-m", "echo", "-t", "sum", "-p", "words", "5", stdin="piped text")
    assert ran.stdout == "echo: Summarise in 5 words: piped text\n"
    ran = oblix("run", "-t", "fr", "-p", "lang", "French", "Hello")  # the template's model and options
    assert ran.exit_code == 0 and ran.stdout == "echo: Hello\n"
    request = calls()[-1]
    assert request.messages[0].content == "Answer in French." and request.temperature == 0.4
    missing = oblix("run", "-t", "fr", "Hello")
    assert missing.exit_code == 1 and "-p lang VALUE" in missing.output
    assert oblix("run", "-p", "a", "b", "x").exit_code == 2
    assert "No template nosuch" in oblix("run", "-t", "nosuch", "x").output
    assert oblix("templates", "delete", "fr").exit_code == 0
    assert "fr" not in json.loads(oblix("templates", "list", "--json").stdout)
    stray = oblix("templates", "save", "bad", "costs $ 5")
    assert stray.exit_code == 1 and "$$" in stray.output


def test_chat_multi_line_prompts_and_the_editor(home: Path, plugin_site: Path, tmp_path: Path) -> None:  # noqa: F811
    from tests.test_chat_pty import finish

    cli_plugin.configure(home, "echo")
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "written in the editor" >> "$1"\n')
    editor.chmod(0o755)
    env = commands.environ(plugin_site, home, EDITOR=str(editor), VISUAL="")
    chat = commands.spawn(env, "chat")
    chat.expect("you> ")
    chat.sendline("!multi first line")
    chat.expect("a line !end sends it")
    chat.expect(r"\.\.\. ")
    chat.sendline("second line")
    chat.expect(r"\.\.\. ")
    chat.sendline("/not a command")
    chat.expect(r"\.\.\. ")
    chat.sendline("!end")
    chat.expect("echo: first line\r\nsecond line\r\n/not a command")
    chat.expect("you> ")
    chat.sendline("!multi")
    chat.expect(r"\.\.\. ")
    chat.sendline("never sent")
    chat.expect(r"\.\.\. ")
    chat.sendeof()  # Ctrl-D drops the block, back at the prompt
    chat.expect("you> ")
    chat.sendline("!edit")
    chat.expect("echo: written in the editor")
    chat.expect("you> ")
    chat.sendline("!multi")
    chat.expect(r"\.\.\. ")
    chat.sendintr()  # Ctrl-C ends the chat, as at the prompt
    chat.expect(r"Chat ended\. Session: (\S+)")
    session_id = chat.match.group(1)
    assert finish(chat)[0] == 0
    shown = json.loads(commands.oblix(plugin_site, home, "sessions", "show", session_id, "--json").stdout)
    asked = [m["content"] for m in shown["messages"] if m["role"] == "user"]
    assert asked == ["first line\nsecond line\n/not a command", "written in the editor"]
