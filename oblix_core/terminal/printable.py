"""Stored text made safe to print: no escape sequence from a title, a message or a file name
reaches the terminal.

Titles, metadata, messages and document names come from users, imports and models; printed
as they are, an ``ESC ]0;…`` sequence would retitle the window, ``ESC [2J`` clear it, an OSC 52
write the clipboard, a bidi override reorder the line. :func:`printable` shows each such
character as its Python escape (``\\x1b``, ``\\u202e``) instead: visible, inert, one per
character, so nothing is silently lost. ``--json`` output is left as it is (JSON escapes them).
A model's answer (which a hostile endpoint writes) is made printable when it goes to a
terminal (:func:`on_terminal`), and left whole when piped.
"""

from __future__ import annotations

import re
from typing import TextIO

#: C0 controls but tab and line feed, DEL, C1 controls (CSI, OSC…), and the bidirectional
#: embeddings, overrides and isolates (the "Trojan Source" characters).
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character but tab and line feed shown as its escape
    (``\\r\\n`` becomes a plain line feed first)."""
    return UNSAFE.sub(_escaped, text.replace("\r\n", "\n"))


def on_terminal(text: str, out: TextIO) -> str:
    """``text`` made :func:`printable` when ``out`` is a terminal; as it is otherwise (a model's
    answer piped to a file or another program keeps every character it had)."""
    isatty = getattr(out, "isatty", None)
    return printable(text) if isatty is not None and isatty() else text
