"""Red-team review of issue 33 (first impressions): each test attacks a class of bug a new user
meets, through the real ``oblix`` command line (a subprocess where the claim is about the process:
its environment, exit status, signals, a pseudo-terminal with pexpect; in process, with click's
runner, where it is about what a command says), real file sessions and config.toml; the
packaged-model tests run the real llama.cpp with the packaged Gemma GGUF (tier ``llama``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from oblix_core.client import OblixClient
from oblix_core.sessions.records import Message
from oblix_core.terminal.printable import printable
from tests import cli_plugin
from tests.support import commands

#: Titles and metadata a hostile export or a careless script can store: window-title (OSC 0),
#: clipboard (OSC 52) and screen-clearing sequences, a bell, a carriage return, a bidi override.
HOSTILE_TITLE = (
    "evil \x1b]0;pwned\x07 \x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J\x1b[31mred\x1b[0m \u202eflipped\u202c \rend"
)
HOSTILE_METADATA = {"note": "meta\x1b]0;owned\x07data", "k\x1b[5m": "v"}
HOSTILE_MESSAGE = "answer \x1b]0;title\x07 text\x1b[2J\nsecond line"
#: What must never reach stdout from stored text (rich's own SGR colours are fine on a terminal).
INJECTED = re.compile(r"\x1b\]|\x1b\[2J|\x1b\[5m|\x1b\[31m|\x07|\u202e|\r(?!\n)")


def _terminal_env(site: Path | None, home: Path) -> dict[str, str]:
    """The CLI's environment for a pseudo-terminal: its width comes from the terminal itself."""
    return {k: v for k, v in commands.environ(site, home).items() if k not in ("COLUMNS", "TTY_COMPATIBLE")}


def _chat(env: dict[str, str], timeout: int) -> Any:
    """``oblix chat`` on a 40x200 pseudo-terminal, at its first prompt."""
    import pexpect

    chat = pexpect.spawn(
        sys.executable,
        ["-m", "oblix_core", "chat"],
        env=env,
        encoding="utf-8",
        dimensions=(40, 200),
        timeout=timeout,
    )
    chat.expect("you> ")
    return chat


def _hostile_home(home: Path) -> str:
    """A home holding one session whose title, metadata and messages carry escape sequences."""

    async def fill() -> str:
        async with OblixClient(home=home) as client:
            sid = await client.create_session(title=HOSTILE_TITLE, metadata=HOSTILE_METADATA)
            client.store.append_messages(sid, [Message(role="user", content=HOSTILE_MESSAGE)])
            return sid

    return anyio.run(fill)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    home = tmp_path_factory.mktemp("hostile") / "home"
    home.mkdir()
    yield home, _hostile_home(home)


def test_printable_escapes_controls_and_keeps_text_lines_and_wide_characters() -> None:
    assert printable("a\x1b[31mb\x07c") == "a\\x1b[31mb\\x07c"
    assert printable("x\u202ey\x9bz\x7f") == "x\\u202ey\\x9bz\\x7f"
    assert printable("one\r\ntwo\tthree\rfour") == "one\ntwo\tthree\\x0dfour"
    assert printable("日本語 🎉 café") == "日本語 🎉 café"


@pytest.mark.parametrize(
    "env",
    [
        {"COLUMNS": "40"},
        {"COLUMNS": "80", "NO_COLOR": "1"},
        {"COLUMNS": "200", "FORCE_COLOR": "1"},
        {"TERM": "dumb"},
    ],
    ids=["40", "no-color", "force-color", "dumb"],
)
@pytest.mark.parametrize(
    "args",
    [("sessions", "list"), ("sessions", "search", "evil"), ("sessions", "show", "{sid}")],
    ids=["list", "search", "show"],
)
def test_piped_listings_carry_no_escape_sequence_from_stored_text(
    hostile: tuple[Path, str], args: tuple[str, ...], env: dict[str, str]
) -> None:
    home, sid = hostile
    done = commands.oblix(None, home, *(a.format(sid=sid) for a in args), **env)
    assert done.returncode == 0, done.stderr
    assert not INJECTED.search(done.stdout), repr(done.stdout)
    assert "\\x1b]0;pwned\\x07" in done.stdout  # shown, visibly, not dropped
    as_json = commands.oblix(None, home, *(a.format(sid=sid) for a in args), "--json", **env)
    assert as_json.returncode == 0, as_json.stderr
    data = json.dumps(json.loads(as_json.stdout), ensure_ascii=False)  # valid, and the text as stored
    assert json.dumps(HOSTILE_TITLE, ensure_ascii=False) in data


@pytest.mark.slow
@pytest.mark.parametrize("width", [40, 80, 200])
def test_on_a_terminal_listings_carry_no_escape_sequence_from_stored_text(
    hostile: tuple[Path, str], width: int
) -> None:
    import pexpect

    home, sid = hostile
    env = _terminal_env(None, home)
    for args in (["sessions", "list"], ["sessions", "show", sid]):
        child = pexpect.spawn(
            sys.executable, ["-m", "oblix_core", *args], env=env, encoding="utf-8", dimensions=(40, width)
        )
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        out = child.before or ""
        assert child.exitstatus == 0, out
        assert not INJECTED.search(out.replace("\r\n", "\n")), repr(out)


@pytest.mark.slow
def test_chat_list_and_load_carry_no_escape_sequence_from_stored_text(
    hostile: tuple[Path, str], tmp_path: Path
) -> None:
    import pexpect

    home, sid = hostile
    site = cli_plugin.install(tmp_path / "site")  # the scripted test double: /list needs no real model
    cli_plugin.configure(home, "echo")
    env = _terminal_env(site, home)
    chat = _chat(env, 60)
    chat.sendline("/list")
    chat.expect("you> ")
    listed = chat.before or ""
    chat.sendline(f"/load {sid[:8]}")
    chat.expect("second line")  # the last message, shown on one line ("  you> ..." before it)
    loaded = chat.before or ""
    chat.expect("you> ")
    chat.sendeof()
    chat.expect(pexpect.EOF)
    for out in (listed, loaded):
        assert "\\x1b]0;" in out, repr(out)
        assert not INJECTED.search(out.replace("\r\n", "\n")), repr(out)
    assert os.environ.get("OBLIX_HOME") != str(home)


# -- Ctrl-C while `oblix` is still starting ------------------------------------------------------

STARTING = """
import os, signal, sys
sys.argv[0] = {program!r}
import oblix_core.cli  # what the program imports first
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the rest of the command line is imported
import oblix_core.cli.main
print("still running")
"""


@pytest.mark.parametrize("program", ["/usr/local/bin/oblix", "/site/oblix_core/__main__.py"])
def test_ctrl_c_while_oblix_starts_exits_130_without_a_traceback(program: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STARTING.format(program=program)],
        env=commands.environ(None, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (130, ""), done
    assert "Traceback" not in done.stderr and "Interrupted." in done.stderr, done.stderr


def test_importing_the_cli_elsewhere_leaves_ctrl_c_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STARTING.format(program="/usr/bin/pytest")],
        env=commands.environ(None, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr, done


# -- templates: the text a template is given ------------------------------------------------------


@pytest.fixture
def newcomer(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$OBLIX_HOME`` and no ``$OPENAI_API_KEY``, for ``commands.invoke`` in process."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return home


def test_a_template_that_takes_input_refuses_to_run_without_any(newcomer: Path) -> None:
    saved = commands.invoke("templates", "save", "summ", "Summarise in $words words: $input")
    assert saved.exit_code == 0, saved.output
    for stdin in ("", "   \n"):
        done = commands.invoke("run", "-t", "summ", "-p", "words", "3", stdin=stdin)
        assert done.exit_code == 2 and done.stdout == "", (done.output, done.exception)
        assert "$input" in done.stderr and "PROMPT" in done.stderr, done.stderr
    listed = commands.invoke("sessions", "list", "--json")
    assert json.loads(listed.stdout) == []  # nothing ran, nothing stored


# -- first-time mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "openai:gpt-4o-mini"])
def test_asking_for_the_default_cloud_model_without_its_key_names_the_key(model: str, newcomer: Path) -> None:
    done = commands.invoke("run", "-m", model, "hi")
    assert done.exit_code == 1 and done.stdout == "", (done.output, done.exception)
    assert "OPENAI_API_KEY" in done.stderr and "oblix[openai]" in done.stderr, done.stderr
    assert isinstance(done.exception, SystemExit) and "Traceback" not in done.stderr  # said, not raised
    other = commands.invoke("run", "-m", "gpt-5-nano", "hi")
    assert other.exit_code == 1 and "OPENAI_API_KEY" not in other.stderr, other.stderr


# -- the packaged model in a conversation ------------------------------------------------------

#: What a prompt format's frame looks like when it leaks into an answer.
LABELS = re.compile(r"\b(Question|Answer|USER|ASSISTANT)\s*:|<(start|end)_of_turn>|<eos>|<bos>|###")


def test_the_fewshot_prompt_leaves_out_earlier_exchanges_that_only_echoed() -> None:
    from oblix_core.models.backend import ChatMessage
    from oblix_llamacpp.prompts import echoes, fewshot

    assert echoes("Thanks!", "Thanks!") and echoes("And dog?", "And dog? A dog.") and echoes("Hi", " ")
    assert not echoes("And dog?", "A dog.") and not echoes("Hello!", "Hi!")
    history = [
        ChatMessage("user", "I like pasta."),
        ChatMessage("assistant", "I like pasta."),
        ChatMessage("user", "What is the capital of France?"),
        ChatMessage("assistant", "Paris."),
        ChatMessage("user", "Thanks!"),
    ]
    prompt, _ = fewshot(history)
    assert "I like pasta." not in prompt  # the echo is not shown to the model as an example
    assert prompt.endswith(
        "Question: What is the capital of France?\nAnswer: Paris.\n\nQuestion: Thanks!\nAnswer:"
    )


#: Chats where a statement follows a question (the echo compounds from turn to turn).
CHATS = [
    [
        "Hi, my name is Ana.",
        "What is the capital of France?",
        "And of Italy?",
        "Write a poem about the sea.",
        "Thanks!",
    ],
    ["Hello!", "Can you help me plan dinner?", "I like pasta.", "What should I cook?", "Great, thanks."],
    ["I'm learning French.", "How do you say cat in French?", "And dog?", "Merci!"],
]


#: Bare greetings, alone: a small model tends to copy a worked example back for them.
GREETINGS = ("hi", "Hello")


@pytest.mark.llama
def test_the_packaged_model_in_sessions_neither_echoes_loops_nor_leaks_its_frame(tmp_path: Path) -> None:
    from oblix import ModelType
    from oblix_llamacpp.loops import find_loop, normalize
    from oblix_llamacpp.prompts import FEWSHOT_EXAMPLES, echoes

    async def talk() -> list[tuple[str, str, int]]:
        turns = []
        async with OblixClient(home=tmp_path) as client:
            await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m")
            for chat in CHATS:
                sid = await client.create_session(title="chat")
                for message in chat:
                    result = await client.execute(message, session_id=sid, stream=False)
                    turns.append((message, result["response"], result["metrics"]["output_tokens"]))
            result = await client.execute(
                "What is the capital of Spain?", system="Answer in one short sentence.", stream=False
            )
            turns.append(("(system=) What is the capital of Spain?", result["response"], 0))
            for greeting in GREETINGS:
                result = await client.execute(greeting, stream=False)
                turns.append((greeting, result["response"], result["metrics"]["output_tokens"]))
        return turns

    turns = anyio.run(talk)
    report = "\n".join(f"{m!r} -> {a!r}" for m, a, _ in turns)
    for _, answer, tokens in turns:
        assert answer.strip() and tokens <= 160, report
        assert find_loop(answer) is None and not LABELS.search(answer), report
    examples = {normalize(text) for pair in FEWSHOT_EXAMPLES for text in pair}
    copied = [(m, a) for m, a, _ in turns[-len(GREETINGS) :] if normalize(a) in examples]
    assert not copied, f"answers that are a worked example of the prompt: {copied}"
    chats = turns[: sum(len(chat) for chat in CHATS)]  # a greeting answered "Hi!" is no echo to count
    echoed = [m for m, a, _ in chats if echoes(m, a)]
    assert len(echoed) <= 4, f"{len(echoed)} of {len(chats)} chat answers only repeat the message:\n{report}"
    spain = next(a for m, a, _ in turns if m.startswith("(system=)"))
    assert "madrid" in spain.lower(), report


@pytest.mark.llama
def test_oblix_chat_with_the_packaged_model_answers_a_greeting_and_thanks(tmp_path: Path) -> None:
    import pexpect

    from oblix_llamacpp.prompts import echoes

    env = _terminal_env(None, tmp_path)
    chat = _chat(env, 240)
    answers = []
    for message in ("Hi, my name is Ana.", "What is the capital of France?", "Thanks!"):
        chat.sendline(message)
        chat.expect(r"ai> (.*?)\r\n.*?you> ", timeout=240)
        answers.append((message, chat.match.group(1)))
    chat.sendeof()
    chat.expect(pexpect.EOF)
    report = repr(answers)
    assert all(a.strip() and not LABELS.search(a) for _, a in answers), report
    assert not any(echoes(m, a) for m, a in answers), report
    assert "paris" in answers[1][1].lower(), report


def test_oblix_chat_without_any_model_says_so_before_the_first_prompt(
    newcomer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "llama_cpp")
    done = commands.invoke("chat", stdin="hello\n")
    assert done.exit_code == 1, (done.output, done.exception)
    assert "No model is available" in done.stderr and "oblix[local]" in done.stderr, done.stderr
    assert "you>" not in done.stdout and "[error]" not in done.stdout, done.stdout
    assert isinstance(done.exception, SystemExit) and "Traceback" not in done.stderr


@pytest.mark.parametrize("store", ["", "  "])
def test_an_empty_store_name_is_an_error_not_the_default_store(store: str, newcomer: Path) -> None:
    done = commands.invoke("--store", store, "sessions", "list")
    assert done.exit_code == 2 and done.stdout == "", (done.output, done.exception)
    assert "--store" in done.stderr and "file, redis, s3" in done.stderr, done.stderr


@pytest.mark.slow
def test_an_answer_reaches_a_terminal_inert_and_a_pipe_whole(tmp_path: Path) -> None:
    """A model's answer is written by whoever runs the endpoint: on a terminal its escape
    sequences are shown, not obeyed (``oblix run`` and ``sessions show --last``); piped, they
    are left for the program reading it (the echo model answers ``echo: <prompt>``)."""
    import pexpect

    home = tmp_path / "home"
    home.mkdir()
    site = cli_plugin.install(tmp_path / "site")
    cli_plugin.configure(home, "echo")
    env = _terminal_env(site, home)
    for args in (["run", HOSTILE_TITLE], ["sessions", "show", "--last"]):
        child = pexpect.spawn(sys.executable, ["-m", "oblix_core", *args], env=env, encoding="utf-8")
        child.expect(pexpect.EOF, timeout=60)
        child.close()
        out = (child.before or "").replace("\r\n", "\n")
        assert child.exitstatus == 0, out
        assert not INJECTED.search(out) and "\\x1b]0;pwned\\x07" in out, repr(out)
    piped = subprocess.run(
        [sys.executable, "-m", "oblix_core", "sessions", "show", "--last"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and "\x1b]0;pwned\x07" in piped.stdout, piped.stderr  # raw, not escaped
