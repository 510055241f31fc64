"""A plugin for CLI tests, installed by entry point the way pip would (a ``.dist-info`` folder).

It registers the scripted test double (``oblix_core.testing.ScriptedPlugin``) under the
model type ``scripted``: model ``echo`` answers ``echo: <prompt>`` at once, model
``slow`` writes ``word0 word1 ...`` one word every ``$OBLIX_TEST_DELAY`` seconds
(default 0.05), 400 words, so that a test can interrupt it midway. These are test
doubles, not models; the CLI, the store and the signal handling around them are real.
"""

from __future__ import annotations

from pathlib import Path

MODULE = """
import os
from oblix_core.testing import ScriptedPlugin, Step

_DELAY = float(os.environ.get("OBLIX_TEST_DELAY", "0.05"))
_SLOW = Step(tuple(f"word{i} " for i in range(400)), delay=_DELAY)
plugin = ScriptedPlugin({"slow": [_SLOW] * 50})
"""

CONFIG = """
[[models]]
type = "scripted"
name = "{name}"
"""


def install(site: Path) -> Path:
    """Write the plugin module and its entry point into ``site`` (a folder for ``PYTHONPATH``)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "oblix_clitest.py").write_text(MODULE)
    info = site / "oblix_clitest-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oblix-clitest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[oblix]\nclitest = oblix_clitest:plugin\n")
    return site


def configure(home: Path, *names: str, extra: str = "") -> None:
    """A ``config.toml`` in ``home`` hooking the scripted models ``names`` (``echo``, ``slow``)."""
    (home / "config.toml").write_text("".join(CONFIG.format(name=n) for n in names) + extra)
