"""The public faces plugin authors and users import: ``oblix.plugin`` (a table of contents,
every name documented), ``oblix.errors`` (every public error), ``oblix.testing``, ``oblix.agents``."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import oblix.errors
import oblix.plugin
import oblix.testing
import oblix_core.testing
from oblix_core.errors import OblixError, PluginError

ROOT = Path(__file__).resolve().parents[1]


def _contents(module: object) -> list[str]:
    """The names listed in the ``Contents`` block of ``module``'s docstring."""
    doc = module.__doc__ or ""
    block = doc.split("Contents\n--------\n", 1)[1].split("\n\n", 1)[0]
    names = []
    for line in block.splitlines():
        listed = line.split(":", 1)[1] if re.match(r"^\S", line) else line
        names += [n.strip() for n in listed.split(",") if n.strip()]
    return names


def test_help_of_oblix_plugin_reads_as_a_table_of_contents() -> None:
    listed = _contents(oblix.plugin)
    assert len(listed) == len(set(listed)), "a name listed twice"
    assert sorted(listed) == sorted(oblix.plugin.__all__)


def test_every_name_in_oblix_plugin_is_documented_in_the_plugin_guide() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    missing = [name for name in oblix.plugin.__all__ if f"`{name}" not in text]
    assert missing == []


def _oblix_errors() -> set[type[OblixError]]:
    for module in ("oblix_core.client", "oblix_core.cli.main"):
        importlib.import_module(module)  # every core module that defines an error is loaded
    found, todo = set(), [OblixError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {c for c in found if c.__module__.startswith("oblix_core.") and not c.__name__.startswith("_")}


def test_oblix_errors_exports_every_public_error() -> None:
    exported = {getattr(oblix.errors, name) for name in oblix.errors.__all__}
    assert {oblix.errors.BudgetExceededError, oblix.errors.ModelCoolingDownError} <= exported
    missing = sorted(c.__name__ for c in _oblix_errors() - exported)
    assert missing == [], f"export {missing} from oblix/errors.py (the public home of every error)"
    assert importlib.import_module("oblix").errors is sys.modules["oblix.errors"]


def test_oblix_testing_is_the_public_home_of_the_contract_suites() -> None:
    for name in oblix_core.testing.__all__:
        assert getattr(oblix.testing, name) is getattr(oblix_core.testing, name)


def test_oblix_agents_imports_no_plugin_module() -> None:
    tree = ast.parse((ROOT / "oblix" / "agents.py").read_text(encoding="utf-8"))
    plugins = {p.name for p in (ROOT / "plugins").iterdir() if p.is_dir()}
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported & plugins == set()


def test_the_reference_import_of_the_monitors_works() -> None:
    from oblix.agents import BaseAgent, ConnectivityAgent, ResourceMonitor

    assert issubclass(ResourceMonitor, BaseAgent) and issubclass(ConnectivityAgent, BaseAgent)
    code = "from oblix.agents import ResourceMonitor"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"OBLIX_DISABLE_PLUGINS": "system", "PATH": ""},
        timeout=120,
    )
    assert done.returncode == 1 and PluginError.__name__ in done.stderr and "resource_monitor" in done.stderr


def test_oblix_home_is_the_home_of_the_client_building_the_store(tmp_path: Path, home: Path) -> None:
    from oblix.plugin import SessionStore, hookimpl, oblix_home
    from oblix_core.client import OblixClient

    seen: list[Path] = []
    file_store = OblixClient(home=home).registry.stores["file"]

    def remembering(**options: object) -> SessionStore:
        seen.append(oblix_home())
        return file_store(root=oblix_home() / "mine")

    class Plugin:
        @hookimpl
        def oblix_register_session_stores(self, register):  # type: ignore[no-untyped-def]
            register("mine", remembering)

    other = tmp_path / "elsewhere"
    client = OblixClient(home=other, session_store="mine", plugins=[Plugin()])
    client.store.close()
    assert seen == [other] and oblix_home() == home  # $OBLIX_HOME outside the client's build
    assert (other / "mine").is_dir()


def test_help_of_oblix_plugin_starts_with_its_contents() -> None:
    import pydoc

    text = pydoc.render_doc(oblix.plugin, renderer=pydoc.plaintext)
    assert text.index("Contents") < text.index("CLASSES")


@pytest.mark.parametrize("name", ["oblix.plugin", "oblix.errors", "oblix.testing", "oblix.agents"])
def test_each_public_module_has_all(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ and all(hasattr(module, n) for n in module.__all__)
