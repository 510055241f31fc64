"""The interactive chat loop behind ``execute(..., chat=True)`` and ``oblix chat``.

Keys: Ctrl-C while an answer is written stops that answer (the part already shown is
stored, marked interrupted) and returns to the prompt; Ctrl-C or Ctrl-D at the prompt
ends the chat. Text typed while an answer streams is not echoed into it; it waits at
the next prompt (with ``readline``). A new chat (and ``/new``) stores its session with
its first exchange.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from oblix_core.documents.retrieval import sources_text
from oblix_core.errors import OblixError, StreamInterruptedError
from oblix_core.sessions.api import resolve_session_id
from oblix_core.terminal import chat_input
from oblix_core.terminal.console import CtrlC, catch_ctrl_c, cli_message, print_answer
from oblix_core.terminal.explain import explain
from oblix_core.terminal.printable import printable

if TYPE_CHECKING:
    from oblix_core.client import OblixClient
    from oblix_core.request.conversation import ResponseStream

HELP = """Commands:
  /list         recent sessions
  /load ID      switch to session ID (or a unique start of it) and show its last turns
  /new          start a new session (stored with its first exchange)
  /models       hooked models
  /status       agents' latest checks and the current session
  /why          why the last prompt went to its model: candidates, skips, attempts
  /docs W       answer from the documents of workspace W, citing them; /docs off stops
  !multi        a prompt of several lines, ended by a line !end
  !edit         write the prompt in $VISUAL/$EDITOR
  /help         this text
  /exit         leave the chat (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C while an answer is written stops it and keeps the part shown."""

#: Messages shown from a session when it is resumed (``--session``, ``/load``).
RECENT_MESSAGES = 4
#: Characters shown of each of those messages.
RECENT_CHARS = 300
INTERRUPTED = "cancelled by the user"


def _print(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


async def _read(read_line: Callable[[str], str], prompt: str) -> str:
    """``read_line(prompt)`` in a daemon thread, so that ending the chat never waits for it."""
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(read_line(prompt))
        except BaseException as exc:
            box.append(exc)
        with contextlib.suppress(Exception):  # the chat may have ended meanwhile
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, name="oblix-chat-input", daemon=True).start()
    await done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return str(box[0])


class _TypeAhead:
    """Keys typed while an answer streams: not echoed into it, offered at the next prompt.

    While an answer is written the terminal neither echoes nor line-buffers keys
    (Ctrl-C still interrupts); what was typed is collected afterwards and, when
    ``readline`` is available, pre-filled into the next prompt's line.
    """

    def __init__(self, active: bool) -> None:
        self.text = ""
        self._fd = -1
        self._saved: list[Any] | None = None
        if not active:
            return
        with contextlib.suppress(ImportError, OSError, ValueError):
            import termios

            if sys.stdin.isatty():
                self._fd = sys.stdin.fileno()
                self._saved = termios.tcgetattr(self._fd)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        if self._saved is None:
            yield
            return
        import termios

        quiet = list(self._saved)
        quiet[3] = (quiet[3] & ~(termios.ECHO | termios.ICANON)) | termios.NOFLSH  # keep keys on Ctrl-C
        quiet[6] = list(quiet[6])
        quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 0, 0
        termios.tcsetattr(self._fd, termios.TCSANOW, quiet)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.text += _edited(os.read(self._fd, 4096).decode("utf-8", "replace"))
            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)

    @contextlib.contextmanager
    def offered(self) -> Iterator[None]:
        """Pre-fill the next ``input()`` line with what was typed (needs ``readline``)."""
        text, self.text = self.text, ""
        try:
            import readline
        except ImportError:
            yield
            return
        if text:
            readline.set_startup_hook(lambda: readline.insert_text(text))
        try:
            yield
        finally:
            readline.set_startup_hook(None)


def _edited(raw: str) -> str:
    """Typed keys as text: backspaces applied, line ends and other control keys dropped."""
    out: list[str] = []
    for char in raw:
        if char in "\x7f\b":
            if out:
                out.pop()
        elif char.isprintable():
            out.append(char)
        elif char in "\r\n\t":
            out.append(" ")
    return "".join(out).strip()


async def run_chat(
    client: OblixClient,
    first_prompt: str | None = None,
    *,
    session_id: str | None = None,
    stream: bool = True,
    read_line: Callable[[str], str] = input,
    **options: Any,
) -> dict[str, Any]:
    """Chat until ``/exit``, Ctrl-D or Ctrl-C at the prompt; returns the last result.

    The result always has ``session_id`` (``None`` if nothing was stored). The chat
    continues ``session_id``, else the client's current session, else starts a new
    one, stored with its first exchange.
    """
    interactive = read_line is input
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    session_id = session_id or client.current_session_id
    if session_id is not None:
        session_id = await anyio.to_thread.run_sync(resolve_session_id, client, session_id)
        await client.ause_session(session_id)
    _print(
        f"Oblix chat - {f'session {session_id}' if session_id else 'new session'}. Type /help for commands."
    )
    if session_id is not None:
        await _show_recent(client, session_id)
    chat = _Chat(client, session_id, stream, read_line, interactive, options)
    async with catch_ctrl_c() as keys:
        await chat.loop(keys, first_prompt)
    last_session = chat.session_id or chat.previous
    if chat.session_id is None and chat.previous:  # /new, then nothing asked
        _print("The new session stored nothing; the session before it:")
    if last_session:
        _print(f"Chat ended. Session: {last_session}")
    else:
        _print("Chat ended. Nothing was stored.")
    return chat.last | {"session_id": last_session}


class _CtrlCAtPrompt(Exception):
    """Ctrl-C while a ``!multi`` block is typed: the chat ends, as with Ctrl-C at the prompt."""


@attrs.define
class _Chat:
    """The state of one chat: the client, the current session and the last result."""

    client: OblixClient
    session_id: str | None
    stream: bool
    read_line: Callable[[str], str]
    interactive: bool
    options: dict[str, Any]
    last: dict[str, Any] = attrs.field(factory=dict)
    #: The session left with ``/new``, reported at the end if the new one stored nothing.
    previous: str | None = None
    #: The last prompt's stream, whose ``routing_decision`` ``/why`` prints.
    response: ResponseStream | None = None
    typed: _TypeAhead = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.typed = _TypeAhead(self.interactive)

    async def loop(self, keys: CtrlC, prompt: str | None) -> None:
        while True:
            if prompt is None:
                prompt = await self._prompt(keys)
                if prompt is None:
                    return
            prompt = prompt.strip()
            if chat_input.command(prompt):
                try:
                    prompt = (await self._long_prompt(keys, prompt) or "").strip()
                except _CtrlCAtPrompt:
                    return
            if prompt.startswith("/") and "\n" not in prompt:
                command, _, argument = prompt.partition(" ")
                if command in ("/exit", "/quit"):
                    return
                await self._command(command, argument.strip())
            elif prompt:
                await self._answer(keys, prompt)
            prompt = None

    async def _prompt(self, keys: CtrlC) -> str | None:
        """The next line, or ``None`` at end of input or Ctrl-C."""
        with keys.cancels(), self.typed.offered():
            try:
                return await _read(self.read_line, "you> ")
            except EOFError:
                pass
        _print()
        return None

    async def _long_prompt(self, keys: CtrlC, line: str) -> str | None:
        """``!multi`` (lines up to ``!end``) or ``!edit`` (the editor); ``None``: nothing to send."""

        async def more(text: str) -> str | None:
            with keys.cancels() as scope:
                try:
                    return await _read(self.read_line, text)
                except EOFError:
                    return None
            if scope.cancelled_caught:  # its input() still waits in its thread: end, as at the prompt
                _print()
                raise _CtrlCAtPrompt
            return None

        word, rest = chat_input.command(line) or ("", "")
        if word == chat_input.MULTI:
            _print(f"Type the prompt; a line {chat_input.END} sends it, Ctrl-D drops it.")
            return await chat_input.read_multi(more, rest)
        try:
            return await chat_input.edit(rest)
        except (OSError, subprocess.CalledProcessError) as exc:
            _print(f"[error] the editor ({' '.join(chat_input.editor())}) failed: {exc}; set $EDITOR.")
            return None

    async def _answer(self, keys: CtrlC, prompt: str) -> None:
        """Stream one answer; Ctrl-C stops it and stores the part shown."""
        _print("ai> ", end="")
        response = None
        try:
            response = self.response = self.client.stream(
                prompt, session_id=self.session_id, **dict(self.options)
            )
            with self.typed.holding(), keys.cancels() as scope:
                self.last = await print_answer(response, live=self.stream)
            if scope.cancelled_caught:
                if not response.delivered:
                    _print()
                stored = await response.store_interrupted(INTERRUPTED)
                where = response.request.session_id
                _print(f"[interrupted; {'the part shown is stored' if stored else 'nothing stored'}]")
                if stored:
                    await self._entered(where)
                return
        except OblixError as exc:
            _print(f"\n[error] {cli_message(exc)}")
            if isinstance(exc, StreamInterruptedError) and response is not None:
                await self._entered(response.request.session_id)  # the core stored the partial
            return
        if self.last.get("sources"):  # documents: the numbered sources the answer may cite
            _print(sources_text(self.last["sources"]))
        await self._entered(self.last.get("session_id"))

    async def _entered(self, session_id: str | None) -> None:
        """The session an exchange went to becomes the chat's (and the client's) current one."""
        if session_id and session_id != self.session_id:
            self.session_id = session_id
            await self.client.ause_session(session_id)

    async def _command(self, command: str, argument: str) -> None:
        """Run one slash command."""
        client = self.client
        if command == "/list":
            for s in await client.alist_sessions(limit=20):
                marker = "*" if s["id"] == self.session_id else " "
                count = f"{s['message_count']:>4} msgs"
                title = " ".join((s["title"] or "").split())
                _print(printable(f"{marker} {s['id']}  {s['updated_at']}  {count}  {title}"))
        elif command == "/load":
            await self._load(argument)
        elif command == "/new":
            self.previous, self.session_id = self.session_id or self.previous, None
            client.clear_current_session()
            _print("New session (stored with its first exchange).")
        elif command == "/models":
            for model in client.models:
                kind = "local" if model.is_local else "cloud"
                _print(f"  {model.model_id}  ({kind}, context {model.context_window})")
            if not client.models:
                _print("  no model hooked")
        elif command == "/status":
            self._status()
        elif command == "/why":
            decision = self.response.routing_decision if self.response is not None else None
            _print(explain(decision) if decision else "No prompt routed yet in this chat.")
        elif command == "/docs":  # documents: draw on a workspace (oblix docs add)
            await self._docs(argument)
        elif command == "/help":
            _print(HELP)
        else:
            _print(f"Unknown command {command}. {HELP}")

    async def _docs(self, argument: str) -> None:
        if argument in ("", "off"):
            self.options.pop("workspace_id", None)
            _print("Answers no longer draw on documents." if argument else "Usage: /docs W, or /docs off.")
            return
        try:
            names = {w["name"]: w["id"] for w in await self.client.list_workspaces()}
        except OblixError as exc:
            _print(f"[error] {cli_message(exc)}")
            return
        if argument not in names and argument not in names.values():
            _print(f"No workspace {argument!r} ({', '.join(names) or 'none yet: oblix docs add PATH'}).")
            return
        self.options["workspace_id"] = names.get(argument, argument)
        _print(f"Answers draw on workspace {argument} and cite it; /docs off stops.")

    async def _load(self, argument: str) -> None:
        if not argument:
            _print("Usage: /load ID (or the start of an id); /list shows the sessions.")
            return
        try:
            found = await anyio.to_thread.run_sync(resolve_session_id, self.client, argument)
        except OblixError as exc:
            _print(f"[error] {exc}")
            return
        await self.client.ause_session(found)
        self.session_id = found
        _print(f"Switched to session {found}.")
        await _show_recent(self.client, found)

    def _status(self) -> None:
        client = self.client
        _print(f"  session: {self.session_id or '(new, not stored yet)'}")
        for check in client.agent_checks():
            _print(f"  {check.agent}: {check.state} target={check.target} {check.reason}")
        for model_id, health in client.model_health().items():
            if health["status"] == "cooling":
                _print(f"  {model_id}: cooling down, about {health['seconds_left_estimate']}s left")
        if not client.agents:
            _print("  no agents hooked")


async def _show_recent(client: OblixClient, session_id: str) -> None:
    """Print the last few messages of a session (read from its tail only)."""
    try:
        record = await anyio.to_thread.run_sync(client.store.load_recent, session_id, RECENT_MESSAGES)
    except OblixError as exc:
        _print(f"[error] {exc}")
        return
    if not record.messages:
        return
    _print(printable(f"Last messages of {' '.join((record.title or 'this session').split())}:"))
    for message in record.messages:
        who = "you" if message.role == "user" else "ai" if message.role == "assistant" else message.role
        text = " ".join(message.content.split())
        if len(text) > RECENT_CHARS:
            text = text[: RECENT_CHARS - 3] + "..."
        mark = " [interrupted]" if (message.metrics or {}).get("interrupted") else ""
        _print(printable(f"  {who}> {text}{mark}"))
