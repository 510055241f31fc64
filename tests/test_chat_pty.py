"""Ctrl-C and Ctrl-D in ``oblix chat`` and ``oblix run``, through a real pseudo-terminal (pexpect).

The answers come from the scripted ``slow`` test double (``tests/cli_plugin.py``: one
word every 50 ms), so that a key can land in the middle of an answer; one test uses
the real packaged model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests import cli_plugin
from tests.support import commands

INTERRUPTED = {"interrupted": True, "reason": "cancelled by the user"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_plugin.install(tmp_path_factory.mktemp("pty-site"))


@pytest.fixture
def slow_home(home: Path) -> Path:
    cli_plugin.configure(home, "slow")
    return home


def spawn(site: Path, home: Path, *args: str) -> pexpect.spawn:
    return commands.spawn(commands.environ(site, home), *args)


def finish(child: pexpect.spawn) -> tuple[int | None, str]:
    """Wait for the process to end; its exit status and the rest of its output."""
    child.expect(pexpect.EOF)
    rest = child.before
    child.close()
    assert child.signalstatus is None, f"killed by signal {child.signalstatus}"
    return child.exitstatus, rest


def stored(site: Path, home: Path, session_id: str) -> list[dict[str, object]]:
    shown = commands.oblix(site, home, "sessions", "show", session_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return list(json.loads(shown.stdout)["messages"])


def test_ctrl_c_stops_an_answer_keeps_the_part_shown_and_returns_to_the_prompt(
    site: Path, slow_home: Path
) -> None:
    chat = spawn(site, slow_home, "chat")
    chat.expect("you> ")
    chat.sendline("tell me a long story")
    chat.expect("word5 ")
    chat.sendintr()
    chat.expect(r"\[interrupted; the part shown is stored\]")
    chat.expect("you> ")  # back at the prompt, same chat
    chat.sendintr()  # Ctrl-C at an empty prompt ends the chat
    chat.expect(r"Chat ended\. Session: (\S+)")
    session_id = chat.match.group(1)
    status, rest = finish(chat)
    assert status == 0 and "Traceback" not in rest
    user, answer = stored(site, slow_home, session_id)
    assert user["content"] == "tell me a long story"
    assert answer["content"].startswith("word0 word1 word2 word3 word4 word5 ")
    assert len(answer["content"].split()) < 400  # stopped midway
    assert answer["model_id"] == "scripted:slow" and answer["metrics"] == INTERRUPTED


def test_text_typed_during_an_answer_waits_for_the_next_prompt(site: Path, slow_home: Path) -> None:
    chat = spawn(site, slow_home, "chat")
    chat.expect("you> ")
    chat.sendline("first")
    chat.expect("word3 ")
    chat.send("typed ahead")
    chat.expect("word8 ")
    chat.sendintr()
    chat.expect("you> ")
    shown_before_prompt = chat.before
    chat.expect("typed ahead")  # offered as the start of the next line
    chat.sendline(" and more")
    chat.expect("word1 ")
    chat.sendintr()
    chat.expect("you> ")
    chat.sendeof()  # Ctrl-D ends the chat too
    chat.expect(r"Chat ended\. Session: (\S+)")
    session_id = chat.match.group(1)
    assert finish(chat)[0] == 0
    assert "typed" not in shown_before_prompt  # never echoed into the answer
    prompts = [m["content"] for m in stored(site, slow_home, session_id) if m["role"] == "user"]
    assert prompts == ["first", "typed ahead and more"]


def test_repeated_ctrl_c_never_prints_a_traceback(site: Path, slow_home: Path) -> None:
    chat = spawn(site, slow_home, "chat")
    chat.expect("you> ")
    chat.sendline("story")
    chat.expect("word2 ")
    chat.sendintr()
    chat.sendintr()
    chat.expect("you> ")
    chat.sendintr()
    chat.sendintr()
    status, rest = finish(chat)
    assert status == 0 and "Traceback" not in rest and "Chat ended. Session:" in rest


def test_ctrl_c_at_the_first_prompt_stores_nothing(site: Path, slow_home: Path) -> None:
    chat = spawn(site, slow_home, "chat")
    chat.expect("you> ")
    chat.sendintr()
    status, rest = finish(chat)
    assert status == 0 and "Chat ended. Nothing was stored." in rest
    listed = commands.oblix(site, slow_home, "sessions", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_run_ctrl_c_exits_130_and_says_what_was_stored(site: Path, slow_home: Path) -> None:
    run = spawn(site, slow_home, "run", "a long story please")
    run.expect("word4 ")
    run.sendintr()
    run.expect(r"Interrupted\. The prompt and the part of the answer shown are stored in session (\S+),")
    session_id = run.match.group(1)
    status, rest = finish(run)
    assert status == 130 and "Traceback" not in rest
    user, answer = stored(site, slow_home, session_id)
    assert user["content"] == "a long story please" and answer["metrics"] == INTERRUPTED
    assert answer["content"].startswith("word0 word1 word2 word3 word4 ")


def test_run_ctrl_c_before_any_answer_stores_nothing(site: Path, slow_home: Path) -> None:
    env = commands.environ(site, slow_home, OBLIX_TEST_DELAY="5")  # first word after 5 s
    run = pexpect.spawn(
        sys.executable, ["-m", "oblix_core", "run", "hello"], env=env, encoding="utf-8", timeout=30
    )
    time.sleep(1.5)
    run.sendintr()
    status, rest = finish(run)
    assert status == 130 and "Traceback" not in rest and "nothing was stored" in rest
    listed = commands.oblix(site, slow_home, "sessions", "list", "--json")
    assert json.loads(listed.stdout) == []


@pytest.mark.llama
def test_chat_ctrl_c_with_the_packaged_model(home: Path) -> None:
    env = {k: v for k, v in commands.environ(Path("."), home).items() if k != "PYTHONPATH"}
    chat = pexpect.spawn(
        sys.executable,
        ["-m", "oblix_core", "chat"],
        env=env,
        encoding="utf-8",
        timeout=240,
        dimensions=(40, 200),
    )
    chat.expect("you> ")
    chat.sendline("Write a long story about a dragon and a knight.")
    chat.expect("ai> ")
    chat.expect(r"\w+ \w+ \w+")  # a few words of the real answer
    chat.sendintr()
    chat.expect(r"\[interrupted; the part shown is stored\]")
    chat.expect("you> ")
    chat.sendeof()
    chat.expect(r"Chat ended\. Session: (\S+)")
    session_id = chat.match.group(1)
    assert finish(chat)[0] == 0
    shown = subprocess.run(
        [sys.executable, "-m", "oblix_core", "sessions", "show", session_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(shown.stdout)["messages"][1]
    assert answer["model_id"] == "llama_cpp:gemma-3-270m" and answer["metrics"] == INTERRUPTED
    assert answer["content"].strip()
