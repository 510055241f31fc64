"""Running the ``oblix`` command line: in process (click's runner) or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from oblix_core.cli.main import build_cli


def invoke(*args: str, stdin: str = "") -> Result:
    """``oblix ARGS`` in this process, with click's test runner."""
    return CliRunner().invoke(build_cli(), list(args), input=stdin)


def environ(site: Path | None, home: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``oblix`` subprocess: ``home``, and ``site`` (test plugins) on the path."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    paths = [str(site)] if site is not None else []
    path = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
    return env | {"PYTHONPATH": path, "OBLIX_HOME": str(home), "COLUMNS": "200"} | extra


def spawn(env: dict[str, str], *args: str, timeout: float = 30) -> Any:
    """``python -m oblix_core ARGS`` on a pseudo-terminal (a ``pexpect.spawn``), 40 x 200."""
    import pexpect

    return pexpect.spawn(
        sys.executable,
        ["-m", "oblix_core", *args],
        env=env,
        encoding="utf-8",
        timeout=timeout,
        dimensions=(40, 200),
    )


def oblix(
    site: Path | None, home: Path, *args: str, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m oblix_core ARGS`` without a terminal (``extra``: environment variables)."""
    return subprocess.run(
        [sys.executable, "-m", "oblix_core", *args],
        input=stdin if stdin is not None else "",
        env=environ(site, home, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
