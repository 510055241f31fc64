"""The interactive chat loop behind ``execute(..., chat=True)`` and ``oblix chat``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from oblix_core.errors import OblixError
from oblix_core.render import print_answer

if TYPE_CHECKING:
    from oblix_core.client import OblixClient

HELP = """Commands:
  /list         recent sessions
  /load ID      switch to session ID
  /new          start a new session
  /models       hooked models
  /status       agents' latest checks and the current session
  /help         this text
  /exit         leave the chat (also Ctrl-D)"""


def _print(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


async def run_chat(
    client: OblixClient,
    first_prompt: str | None = None,
    *,
    session_id: str | None = None,
    stream: bool = True,
    read_line: Callable[[str], str] = input,
    **options: Any,
) -> dict[str, Any]:
    """Chat until ``/exit`` or end of input; returns the last result (always with ``session_id``)."""
    if read_line is input:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    if session_id is None:
        session_id = client.current_session_id or await client.create_and_use_session(title="Chat")
    elif not await client.ause_session(session_id):
        raise OblixError(f"Session {session_id} does not exist; list sessions with `oblix sessions list`.")
    last: dict[str, Any] = {"session_id": session_id}
    _print(f"Oblix chat - session {session_id}. Type /help for commands.")
    prompt = first_prompt
    while True:
        if prompt is None:
            try:
                prompt = await anyio.to_thread.run_sync(read_line, "you> ")
            except EOFError:
                break
        prompt = prompt.strip()
        if not prompt:
            prompt = None
            continue
        if prompt.startswith("/"):
            command, _, argument = prompt.partition(" ")
            if command in ("/exit", "/quit"):
                break
            session_id = await _command(client, command, argument.strip(), session_id)
            last["session_id"] = session_id
            prompt = None
            continue
        _print("ai> ", end="")
        try:
            response = client.stream(prompt, session_id=session_id, **dict(options))
            last = await print_answer(response, live=stream)
        except OblixError as exc:
            _print(f"\n[error] {exc}")
        prompt = None
    _print(f"Chat ended. Session: {session_id}")
    return last | {"session_id": session_id}


async def _command(client: OblixClient, command: str, argument: str, session_id: str) -> str:
    """Run one slash command; returns the (possibly new) current session id."""
    if command == "/list":
        for s in await client.alist_sessions(limit=20):
            marker = "*" if s["id"] == session_id else " "
            _print(f"{marker} {s['id']}  {s['updated_at']}  {s['message_count']:>4} msgs  {s['title'] or ''}")
    elif command == "/load":
        try:
            if argument and await client.ause_session(argument):
                _print(f"Switched to session {argument}.")
                return argument
            _print(f"No session {argument!r}; /list shows the sessions.")
        except OblixError as exc:
            _print(f"[error] {exc}")
    elif command == "/new":
        new_id = await client.create_and_use_session(title="Chat")
        _print(f"New session {new_id}.")
        return new_id
    elif command == "/models":
        for model in client.models:
            kind = "local" if model.is_local else "cloud"
            _print(f"  {model.model_id}  ({kind}, context {model.context_window})")
        if not client.models:
            _print("  no model hooked")
    elif command == "/status":
        _print(f"  session: {session_id}")
        for check in client.agent_checks():
            _print(f"  {check.agent}: {check.state} target={check.target} {check.reason}")
        cooling = client.executor.breaker.cooling_down()
        for model_id, seconds in cooling.items():
            _print(f"  {model_id}: cooling down for {seconds}s")
        if not client.agents:
            _print("  no agents hooked")
    elif command == "/help":
        _print(HELP)
    else:
        _print(f"Unknown command {command}. {HELP}")
    return session_id
