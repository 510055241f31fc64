"""``oblix run``/``chat``/``models`` as people use them, on the scripted test backend.

The scripted models (``tests/cli_plugin.py``) are test doubles registered by a real entry
point; the CLI, the file store, config.toml and the routing are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from oblix_core.cli.common import resolve_model
from oblix_core.client import OblixClient
from oblix_core.errors import OblixError
from oblix_core.testing import ScriptedPlugin
from tests import cli_plugin
from tests.support import commands


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_plugin.install(tmp_path_factory.mktemp("cli-site"))


@pytest.fixture
def cli_home(home: Path, plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``$OBLIX_HOME`` with the scripted ``echo`` and ``slow`` models configured."""
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    cli_plugin.configure(home, "echo", "slow")
    yield home


oblix = commands.invoke


def calls() -> list[object]:
    """The requests the scripted ``echo`` model received (the plugin lives in this process)."""
    import oblix_clitest  # type: ignore[import-not-found]

    return list(oblix_clitest.plugin.calls["echo"])


def messages(session_id: str) -> list[dict[str, object]]:
    shown = oblix("sessions", "show", session_id, "--json")
    return list(json.loads(shown.stdout)["messages"])


def session_of(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stderr.strip().rsplit("session ", 1)[1].rstrip("]")


def test_stdout_holds_only_the_answer_and_stderr_the_metadata(cli_home: Path) -> None:
    done = oblix("run", "-m", "echo", "hello")
    assert done.stdout == "echo: hello\n"
    assert "scripted:echo" in done.stderr and "session " in done.stderr
    quiet = oblix("run", "--model", "scripted:echo", "--no-stream", "hello again")
    assert quiet.stdout == "echo: hello again\n"
    as_json = json.loads(oblix("run", "-m", "echo", "--json", "hi").stdout)
    assert as_json["response"] == "echo: hi" and as_json["model_id"] == "scripted:echo"


def test_prompt_from_stdin(cli_home: Path) -> None:
    assert oblix("run", "-m", "echo", stdin="piped prompt\n").stdout == "echo: piped prompt\n\n"
    assert oblix("run", "-m", "echo", "-", stdin="dash prompt").stdout == "echo: dash prompt\n"
    appended = oblix("run", "-m", "echo", "summarise this", stdin="file text")
    assert appended.stdout == "echo: summarise this\n\nfile text\n"
    empty = oblix("run", "-m", "echo")
    assert empty.exit_code == 2 and "Give a PROMPT" in empty.output


def test_continue_and_session_prefixes(cli_home: Path) -> None:
    first = session_of(oblix("run", "-m", "echo", "one"))
    assert session_of(oblix("run", "-m", "echo", "-c", "two")) == first
    assert session_of(oblix("run", "-m", "echo", "--session", first[:8], "three")) == first
    assert [m["content"] for m in messages(first[:6])][::2] == ["one", "two", "three"]
    both = oblix("run", "-c", "--session", first, "x")
    assert both.exit_code == 2 and "either -c/--continue or --session" in both.output
    missing = oblix("run", "-m", "echo", "--session", "ffffffff", "x")
    assert missing.exit_code == 1 and "No session ffffffff" in missing.output
    empty = oblix("run", "-m", "echo", "--session", "", "x")  # never a silent new session
    assert empty.exit_code == 1 and "Invalid session id" in empty.output


def test_continue_without_any_session_says_what_to_do(cli_home: Path) -> None:
    done = oblix("run", "-c", "-m", "echo", "x")
    assert done.exit_code == 1 and "without -c/--continue" in done.output


def test_system_prompt_and_model_options(cli_home: Path) -> None:
    done = oblix(
        "run", "-m", "echo", "-s", "Be brief.", "-o", "temperature", "0.2", "-o", "top_p", "0.9",
        "-o", "stop", "END", "-o", "seed", "7", "--max-tokens", "5", "hi",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    request = calls()[-1]
    assert [(m.role, m.content) for m in request.messages] == [("system", "Be brief."), ("user", "hi")]
    assert request.temperature == 0.2 and request.max_tokens == 5
    assert request.options == {"top_p": 0.9, "stop": "END", "seed": 7}
    stored = messages(session_of(done))
    assert [m["role"] for m in stored] == ["user", "assistant"]  # the system prompt is not stored
    wrong = oblix("run", "-o", "model", "scripted:echo", "hi")
    assert wrong.exit_code == 2 and "use -m/--model" in wrong.output


def test_model_by_bare_name_alias_and_unknown(cli_home: Path) -> None:
    (cli_home / "config.toml").write_text(
        (cli_home / "config.toml").read_text() + '\n[aliases]\nquick = "scripted:echo"\n'
    )
    assert oblix("run", "-m", "quick", "hi").stdout == "echo: hi\n"
    assert oblix("run", "-m", "echo", "hi").stdout == "echo: hi\n"
    unknown = oblix("run", "--model", "openai:gpt-4o-mini", "hi")
    assert unknown.exit_code == 1
    assert "--model openai:gpt-4o-mini is not one of the available models" in unknown.output
    assert "scripted:echo, scripted:slow" in unknown.output and "hooked" not in unknown.output


@pytest.mark.anyio
async def test_an_ambiguous_bare_name_asks_for_the_full_id(home: Path) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin(), ScriptedPlugin(model_type="other")]) as c:
        await c.hook_model("scripted", "m")
        await c.hook_model("other", "m")
        assert resolve_model(c, "scripted:m") == "scripted:m"
        with pytest.raises(OblixError, match="ambiguous: scripted:m, other:m"):
            resolve_model(c, "m")


def test_help_short_flag(cli_home: Path) -> None:
    assert "--store" in oblix("-h").output
    run_help = oblix("run", "-h").output
    assert all(flag in run_help for flag in ("-c, --continue", "-s, --system", "-o, --option", "--no-stream"))


def test_models_and_their_options(cli_home: Path) -> None:
    listed = json.loads(oblix("models", "--json").stdout)
    assert [m["model_id"] for m in listed["models"]] == ["scripted:echo", "scripted:slow"]
    options = {o["backend"]: o for o in json.loads(oblix("models", "--options", "--json").stdout)}
    assert "n_ctx" in options["llama_cpp"]["model_options"]
    assert "first_byte_timeout" in options["openai"]["model_options"]
    assert options["openai"]["request_options"][:2] == ["max_tokens", "temperature"]
    table = oblix("models", "--options").stdout
    assert "request options (-o)" in table and "keep_alive" in table


def test_a_default_that_cannot_load_is_a_one_line_notice(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY set without the openai package: the default is skipped, the command works."""
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError, as if not installed
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "llama_cpp")  # keep this test off the real model
    done = oblix("models", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["models"] == []
    notes = [line for line in done.stderr.splitlines() if line]
    assert len(notes) == 1 and notes[0].startswith("Note: skipping the default model openai:gpt-4o-mini")
    assert "pip install" in notes[0] and "sk-test" not in done.stderr


def test_run_failures_are_one_line_messages(cli_home: Path) -> None:
    (cli_home / "config.toml").write_text('[[models]]\ntype = "nosuch"\nname = "m"\n')
    done = oblix("run", "hi")
    assert done.exit_code == 1 and "No model backend named 'nosuch'" in done.output
    assert "Traceback" not in done.output and ".." not in done.output.replace("...", "")


def test_chat_stores_a_session_with_its_first_exchange(cli_home: Path) -> None:
    script = "/new\n/list\nfirst question\n/new\n/status\n/exit\n"
    done = oblix("chat", "-m", "echo", stdin=script)
    assert done.exit_code == 0, done.output
    assert "New session (stored with its first exchange)." in done.stdout
    sessions = json.loads(oblix("sessions", "list", "--json").stdout)
    assert [s["message_count"] for s in sessions] == [2]  # no empty "Chat" sessions
    assert done.stdout.splitlines()[-1].endswith(f"Chat ended. Session: {sessions[0]['id']}")
    nothing = oblix("chat", "-m", "echo", stdin="/exit\n")
    assert "Chat ended. Nothing was stored." in nothing.stdout
    assert len(json.loads(oblix("sessions", "list", "--json").stdout)) == 1


def test_chat_resumes_a_session_by_prefix_showing_its_last_turns(cli_home: Path) -> None:
    sid = session_of(oblix("run", "-m", "echo", "remember the word tangerine"))
    done = oblix("chat", "-m", "echo", "--session", sid[:8], stdin="and now?\n")
    assert done.exit_code == 0, done.output
    assert f"Oblix chat - session {sid}" in done.stdout
    assert "you> remember the word tangerine" in done.stdout and "ai> echo: remember" in done.stdout
    assert done.stdout.rstrip().endswith(f"Chat ended. Session: {sid}")
    loaded = oblix("chat", "-m", "echo", stdin=f"/load {sid[:6]}\n/load zzz\n")
    assert f"Switched to session {sid}." in loaded.stdout and "you> and now?" in loaded.stdout
    assert "No session zzz" in loaded.stdout
    assert len(messages(sid)) == 4


def test_messages_never_repeat_the_model_id_nor_double_full_stops() -> None:
    from oblix_core.cli.common import cli_message
    from oblix_core.errors import NoModelAvailableError

    error = NoModelAvailableError(
        "No model could answer (scripted:a: scripted:a failed: boom.; scripted:b: timed out.).",
        errors={"scripted:a": "scripted:a: failed: boom.", "scripted:b": "scripted:b did not answer."},
    )
    assert cli_message(error) == (
        "No model could answer:\n  scripted:a: failed: boom.\n  scripted:b: did not answer."
    )
    assert (
        cli_message(OblixError("Cannot read x: bad thing.. Fix it.")) == "Cannot read x: bad thing. Fix it."
    )
    assert cli_message(OblixError("Wait... for it...")) == "Wait... for it..."


def test_idempotency_key_answers_a_rerun_once(cli_home: Path) -> None:
    first = oblix("run", "--idempotency-key", "job-7", "--json", "remember")
    assert first.exit_code == 0, first.output
    answered = calls()[-1]  # the model's request for the first run
    again = oblix("run", "--idempotency-key", "job-7", "--json", "remember")
    assert again.exit_code == 0, again.output
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert two["response"] == one["response"] and two["metrics"]["replayed"] is True
    assert calls()[-1] is answered  # the rerun called no model
    assert len(messages(one["session_id"])) == 2
    other = oblix("run", "--idempotency-key", "job-7", "something else")
    assert other.exit_code != 0 and "differs in: prompt" in other.output


def _cli_in_a_process(home: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``oblix ARGS`` in a fresh interpreter, which then says on stderr which heavy modules it loaded."""
    code = (
        "import sys\n"
        f"sys.argv = ['oblix', *{args!r}]\n"
        "from oblix_core.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted({'numpy', 'uvicorn', 'llama_cpp'} & set(sys.modules)), file=sys.stderr)\n"
    )
    env = {**os.environ, "OBLIX_HOME": str(home)}
    env.pop("OBLIX_DISABLE_PLUGINS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_everyday_commands_start_without_numpy_or_uvicorn(home: Path) -> None:
    """Every ``oblix`` command loads the llama.cpp and server plugins; their heavy imports wait
    for the work that needs them (numpy: a prompt's state cache; uvicorn: ``oblix server``
    serving). Before, numpy (~65 ms) and uvicorn (~40 ms) were imported by each command."""
    listing = _cli_in_a_process(home, ["plugins", "--json"])
    loaded = {p["name"] for p in json.loads(listing.stdout) if p["status"] == "loaded"}
    assert {"llama_cpp", "server"} <= loaded, listing.stdout  # both plugins do load
    for command in (["--help"], ["sessions", "list"], ["server", "--help"]):
        done = _cli_in_a_process(home, command)
        assert "LOADED []" in done.stderr, (command, done.stderr[-2000:])
