"""Longer prompts in the chat: ``!multi`` ... ``!end`` and ``!edit`` (``$VISUAL``/``$EDITOR``).

No click here: the chat loop is part of the SDK (``execute(..., chat=True)``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Awaitable, Callable

import anyio

MULTI = "!multi"
END = "!end"
EDIT = "!edit"
#: The prompt shown for the lines of a ``!multi`` block.
MORE = "... "


def command(line: str) -> tuple[str, str] | None:
    """``(command, rest)`` when ``line`` starts a multi-line or editor prompt, else ``None``."""
    word, _, rest = line.strip().partition(" ")
    return (word, rest.strip()) if word in (MULTI, EDIT) else None


async def read_multi(read: Callable[[str], Awaitable[str | None]], first: str = "") -> str | None:
    """Lines up to one that is just ``!end`` (``None`` if input ends or Ctrl-C comes first)."""
    lines = [first] if first else []
    while True:
        line = await read(MORE)
        if line is None:
            return None
        if line.strip() == END:
            return "\n".join(lines)
        lines.append(line)


def editor() -> list[str]:
    """The editor command: ``$VISUAL``, else ``$EDITOR``, else ``vi`` (``notepad`` on Windows)."""
    chosen = os.environ.get("VISUAL") or os.environ.get("EDITOR") or ("notepad" if os.name == "nt" else "vi")
    return shlex.split(chosen)


def _edit(text: str) -> str:
    handle, name = tempfile.mkstemp(prefix="oblix-prompt-", suffix=".md")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        subprocess.run([*editor(), name], check=True)
        with open(name, encoding="utf-8") as file:
            return file.read()
    finally:
        os.unlink(name)


async def edit(text: str = "") -> str:
    """Open the editor on ``text``; the saved text (in a worker thread; the editor owns the terminal).

    Raises ``OSError`` or ``subprocess.CalledProcessError`` when the editor cannot run or fails.
    """
    return await anyio.to_thread.run_sync(_edit, text)
