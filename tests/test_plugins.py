"""Plugin loading: entry points, allow/deny lists, validation, docs for every hook."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oblix_core import hookimpl, hookspecs
from oblix_core.client import OblixClient
from oblix_core.errors import PluginError
from oblix_core.plugins import build_plugin_manager, plugin_infos

ROOT = Path(__file__).resolve().parents[1]


def _hookspec_names() -> list[str]:
    return [n for n, f in vars(hookspecs).items() if n.startswith("oblix_") and inspect.isfunction(f)]


@pytest.mark.parametrize("name", _hookspec_names())
def test_every_hookspec_is_documented_with_its_signature(name: str) -> None:
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    pattern = re.escape(name) + r"\(" + r",\s*".join(re.escape(p) + r"[^,)]*" for p in params) + r"\)"
    assert re.search(pattern, docs), f"docs/ lacks `{name}({', '.join(params)})`"
    assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_first_party_plugins_load_through_entry_points() -> None:
    names = {info.name for info in plugin_infos(build_plugin_manager())}
    assert {"file", "oblix_core.routing"} <= names


def test_unknown_hook_is_rejected() -> None:
    class Typo:
        @hookimpl
        def oblix_register_modles(self, register):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(PluginError, match="oblix_register_modles"):
        build_plugin_manager([Typo()])


def test_bad_registration_is_rejected(home: Path) -> None:
    class Bad:
        @hookimpl
        def oblix_register_models(self, register):  # type: ignore[no-untyped-def]
            register("bad", object)

    with pytest.raises(PluginError, match="ModelBackend"):
        OblixClient(home=home, plugins=[Bad()])


def test_disable_and_allow_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "file")
    assert "file" not in {i.name for i in plugin_infos(build_plugin_manager())}
    monkeypatch.delenv("OBLIX_DISABLE_PLUGINS")
    monkeypatch.setenv("OBLIX_LOAD_PLUGINS", "")
    assert {i.name for i in plugin_infos(build_plugin_manager())} == {"oblix_core.routing"}
    monkeypatch.setenv("OBLIX_LOAD_PLUGINS", "file")
    assert "file" in {i.name for i in plugin_infos(build_plugin_manager())}


def test_missing_store_plugin_names_the_extra(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "file")
    with pytest.raises(PluginError, match="OBLIX_DISABLE_PLUGINS"):
        OblixClient(home=home)


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin package, really installed (with pip) into a separate folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "tests" / "third_party_plugin"),
        ],
        check=True,
    )
    return target


def _oblix(site: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = os.environ | {"PYTHONPATH": str(site), "OBLIX_HOME": str(home)} | env
    return subprocess.run(
        [sys.executable, "-m", "oblix_core", *args], env=environ, capture_output=True, text=True, check=False
    )


def test_third_party_plugin_is_discovered(third_party_site: Path, home: Path) -> None:
    listed = _oblix(third_party_site, home, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    hello = next(p for p in json.loads(listed.stdout) if p["name"] == "hello")
    assert hello["package"] == "oblix-hello" and hello["version"] == "0.3.1"
    assert hello["hooks"] == ["oblix_register_commands", "oblix_register_models"]
    said = _oblix(third_party_site, home, "hello")
    assert said.stdout.strip() == "hello from oblix-hello"
    disabled = _oblix(third_party_site, home, "plugins", "--json", OBLIX_DISABLE_PLUGINS="hello")
    assert "hello" not in {p["name"] for p in json.loads(disabled.stdout)}


def test_third_party_model_type_serves_requests(third_party_site: Path, home: Path) -> None:
    script = (
        "import anyio\n"
        "from oblix import OblixClient\n"
        "async def main():\n"
        "    c = OblixClient()\n"
        "    await c.hook_model('shout', 'loud')\n"
        "    r = await c.execute('quiet please', stream=False)\n"
        "    print(r['model_id'], r['response'])\n"
        "anyio.run(main)\n"
    )
    environ = os.environ | {"PYTHONPATH": str(third_party_site), "OBLIX_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True)
    assert done.stdout.strip() == "shout:loud QUIET PLEASE", done.stderr
