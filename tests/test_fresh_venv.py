"""The README's install and main command in a fresh virtual environment, as a new user runs them.

Only ``oblix[local]`` is installed (no ``openai`` package) while ``OPENAI_API_KEY`` is set:
the cloud default cannot load and must be skipped with a one-line notice, never break
the command. pip's cache is reused (llama-cpp-python is not compiled again).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.llama


def test_readme_main_command_with_only_the_local_extra_and_an_openai_key(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, oblix = venv / "bin" / "python", venv / "bin" / "oblix"
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[local]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    no_openai = subprocess.run(
        [str(python), "-c", "import openai"], capture_output=True, env=env, check=False
    )
    assert no_openai.returncode != 0  # the premise: only the local extra is installed
    home = tmp_path / "home"
    env |= {"OBLIX_HOME": str(home), "OPENAI_API_KEY": "sk-fresh-venv-test-key"}
    done = subprocess.run(
        [str(oblix), "run", "What is the capital of France?"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    notes = [line for line in done.stderr.splitlines() if line.startswith("Note: ")]
    assert len(notes) == 1 and "openai:gpt-4o-mini" in notes[0] and "pip install" in notes[0]
    assert "Traceback" not in done.stderr and "sk-fresh-venv-test-key" not in done.stderr + done.stdout
    assert "llama_cpp:gemma-3-270m" in done.stderr
    assert not (home / "models").exists()  # the model is shared per machine, not copied per home
