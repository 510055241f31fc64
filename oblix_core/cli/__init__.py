"""The ``oblix`` command line (click): ``main`` builds the group and loads plugin commands;
one module per family of commands (``run``, ``sessions``, ``templates``, ``usage``,
``config``), with ``common``, ``tables`` and ``files`` shared between them.

May import anything in the core; nothing in the core imports it.

When this package is imported by the ``oblix`` program itself (the console script or
``python -m oblix_core``), a Ctrl-C while the command line is still being imported ends the
program with status 130 and one line, not a traceback; ``main`` then restores Python's own
handling.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("\nInterrupted.\n")
    raise SystemExit(130)


def _is_the_oblix_program() -> bool:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "oblix" or program.parts[-2:] == ("oblix_core", "__main__.py")


if _is_the_oblix_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _interrupted_while_starting)
