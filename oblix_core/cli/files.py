"""Session files on the command line: ``-`` is stdout/stdin, and pipes and terminals work.

The SDK's ``export_session`` writes only new or regular files (atomically, never
replacing a device). The commands add streams: ``-`` (stdout for ``export``, stdin for
``import``), and an existing pipe, terminal or other non-regular path (``/dev/stdout``,
a FIFO, ``/dev/fd/3``), which receive the JSON as a plain write.
"""

from __future__ import annotations

import os
import stat
import sys

import anyio
import click

from oblix_core.client import OblixClient
from oblix_core.errors import OblixError

#: The path that means stdout (export) or stdin (import).
STDIO = "-"


def is_stream(path: str) -> bool:
    """Whether ``path`` names a stream to write into rather than a file to create or replace."""
    if path == STDIO or path.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # a new file (or one the SDK explains it cannot write)
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def export_session(client: OblixClient, session_id: str, path: str) -> bool:
    """Export to ``path``; returns whether it went to a stream (``-``, a pipe, a terminal)."""
    if not is_stream(path):
        anyio.run(client.export_session, session_id, path)
        return False
    text = anyio.run(client.export_session_json, session_id) + "\n"
    if path == STDIO:
        click.echo(text, nl=False)
        return True
    try:
        with open(path, "a", encoding="utf-8") as stream:  # "a": never truncate what a redirect holds
            stream.write(text)
    except OSError as exc:
        raise OblixError(f"Cannot write the export to {path}: {exc.strerror or exc}.") from None
    return True


def import_session(client: OblixClient, path: str, new_id: bool) -> str:
    """Import from ``path``, or from stdin when it is ``-``; returns the session id."""
    if path != STDIO:
        return str(anyio.run(client.import_session, path, new_id))
    if sys.stdin.isatty():
        raise click.UsageError("`-` reads the session JSON from stdin: pipe or redirect it (< s.json).")
    text = sys.stdin.read()
    return str(anyio.run(lambda: client.import_session_json(text, new_id, source="stdin")))
