"""Everyday conveniences of the command line (issue 19 items 1, 8, 9).

Pipes (``-`` for stdin/stdout, exports to a pipe), ``sessions show --last`` without an
id, ``run -u``, ``models default``, ``aliases set``, per-model generation defaults,
prompt templates, the ``sessions list`` table, delete confirmation. The CLI runs through
click's runner (``tests/test_cli_run.py``'s ``oblix``) or as a subprocess without a
terminal (``tests/cli_plugin.py``); the scripted models are test doubles, the store
and config.toml are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import cli_plugin
from tests.test_cli_run import calls, cli_home, oblix, plugin_site, session_of  # noqa: F401

DATA = Path(__file__).parent / "data"
REF_ID = "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"


def _imported(home: Path) -> str:
    result = oblix("sessions", "import", str(DATA / "reference_session.json"))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# -- item 1: pipes ---------------------------------------------------------------------------


def test_export_dash_writes_the_json_to_stdout_and_import_dash_reads_stdin(home: Path) -> None:
    _imported(home)
    exported = oblix("sessions", "export", REF_ID[:8], "-")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["id"] == REF_ID  # stdout holds only the document
    assert not (Path.cwd() / "-").exists()
    assert oblix("sessions", "delete", REF_ID, "-y").exit_code == 0
    imported = oblix("sessions", "import", "-", stdin=exported.stdout)
    assert (imported.exit_code, imported.stdout.strip()) == (0, REF_ID)
    again = oblix("sessions", "import", "-", "--new-id", stdin=exported.stdout)
    assert again.exit_code == 0 and again.stdout.strip() != REF_ID
    bad = oblix("sessions", "import", "-", stdin="{")
    assert bad.exit_code == 1 and "stdin" in bad.output
    both = oblix("sessions", "export", REF_ID, "-", "--json")
    assert both.exit_code == 2 and "--json" in both.output


def test_export_to_dev_stdout_and_a_fifo_in_a_real_process(
    home: Path,
    plugin_site: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _imported(home)
    piped = cli_plugin.oblix(plugin_site, home, "sessions", "export", REF_ID, "/dev/stdout")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["id"] == REF_ID
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = cli_plugin.environ(plugin_site, home)
    writer = subprocess.Popen(
        [sys.executable, "-m", "oblix_core", "sessions", "export", REF_ID, str(fifo)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(fifo, encoding="utf-8") as reader:
        assert json.loads(reader.read())["id"] == REF_ID
    assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
    assert fifo.exists() and not fifo.is_file()  # the pipe is still a pipe, not replaced by a file
    restored = cli_plugin.oblix(plugin_site, home, "sessions", "import", "-", "--new-id", stdin=piped.stdout)
    assert restored.returncode == 0, restored.stderr


def test_the_sdk_still_refuses_to_replace_a_device(home: Path, tmp_path: Path) -> None:
    import anyio

    from oblix_core.client import OblixClient
    from oblix_core.errors import OblixError

    _imported(home)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    client = OblixClient()
    with pytest.raises(OblixError, match="not a regular file"):
        anyio.run(client.export_session, REF_ID, str(fifo))
    client.store.close()
