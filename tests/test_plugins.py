"""Plugin loading: entry points, allow/deny lists, validation, docs for every hook."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oblix_core import hookimpl
from oblix_core.client import OblixClient
from oblix_core.errors import PluginError
from oblix_core.plugins import hookspecs
from oblix_core.plugins.registry import build_plugin_manager, plugin_infos
from tests.support import commands

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
    monkeypatch.setenv("OBLIX_LOAD_PLUGINS", "")  # none at all, not even the default store
    assert {i.name for i in plugin_infos(build_plugin_manager())} == {"oblix_core.routing"}
    monkeypatch.setenv("OBLIX_LOAD_PLUGINS", "openai")  # an allow-list never drops the file store
    assert {i.name for i in plugin_infos(build_plugin_manager())} == {"oblix_core.routing", "file", "openai"}


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


def test_third_party_plugin_is_discovered(third_party_site: Path, home: Path) -> None:
    listed = commands.oblix(third_party_site, home, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    hello = next(p for p in json.loads(listed.stdout) if p["name"] == "hello")
    assert hello["package"] == "oblix-hello" and hello["version"] == "0.3.1"
    assert hello["hooks"] == ["oblix_register_commands", "oblix_register_models"]
    said = commands.oblix(third_party_site, home, "hello")
    assert said.stdout.strip() == "hello from oblix-hello"
    disabled = commands.oblix(third_party_site, home, "plugins", "--json", OBLIX_DISABLE_PLUGINS="hello")
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


# -- plugins that fail soft -------------------------------------------------------------

BROKEN_PLUGINS = {
    # entry-point name: the module's source
    "broken_import": "raise RuntimeError('boom at import')\n",
    "broken_register": (
        "from oblix.plugin import hookimpl\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    raise ValueError('boom at registration')\n"
    ),
    "typo_hook": (
        "from oblix.plugin import hookimpl\n@hookimpl\ndef oblix_register_modles(register):\n    pass\n"
    ),
    "broken_command": (
        "from oblix.plugin import hookimpl\n"
        "@hookimpl\n"
        "def oblix_register_commands(cli):\n"
        "    raise KeyError('boom at [/command] registration')\n"
    ),
    "typo_argument": (
        "from oblix.plugin import hookimpl\n@hookimpl\ndef oblix_register_agents(registr):\n    pass\n"
    ),
    "clash_store": (
        "from oblix.plugin import hookimpl\n"
        "@hookimpl\n"
        "def oblix_register_session_stores(register):\n"
        "    register('file', lambda **options: None)\n"
    ),
    "no_generate": (
        "from oblix.plugin import hookimpl, ModelBackend\n"
        "class Silent(ModelBackend):\n"
        "    model_type = 'silent'\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    register('silent', Silent)\n"
    ),
    "fragile_store": (
        "from oblix.plugin import hookimpl\n"
        "def fragile(root=None):\n"
        "    return len(root)  # a bug inside the constructor: TypeError\n"
        "@hookimpl\n"
        "def oblix_register_session_stores(register):\n"
        "    register('fragile', fragile)\n"
    ),
    "needs_missing": (
        "from oblix.plugin import hookimpl, needs\n"
        "needs('no_such_package_for_oblix', install=\"pip install 'oblix-missing-demo[fast]'\")\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    raise AssertionError('never reached')\n"
    ),
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder on PYTHONPATH with one installed distribution whose plugins all misbehave."""
    site = tmp_path_factory.mktemp("broken-site")
    info = site / "oblix_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oblix-broken\nVersion: 1.0\n")
    points = "".join(f"{name} = oblix_broken_{name}\n" for name in BROKEN_PLUGINS)
    (info / "entry_points.txt").write_text("[oblix]\n" + points)
    for name, source in BROKEN_PLUGINS.items():
        (site / f"oblix_broken_{name}.py").write_text(source)
    return site


@pytest.fixture(scope="module")
def broken_listing(broken_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """``oblix plugins --json`` beside the broken plugins, on an empty home, by plugin name: run
    once for the module (two tests read the same listing)."""
    listed = commands.oblix(broken_site, tmp_path_factory.mktemp("listing-home"), "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    return {p["name"]: p for p in json.loads(listed.stdout)}  # stdout is JSON alone


def test_broken_third_party_plugins_are_skipped_and_reported(
    broken_site: Path, home: Path, broken_listing: dict[str, dict[str, Any]]
) -> None:
    by_name = broken_listing
    assert by_name["file"]["status"] == "loaded"
    assert by_name["broken_import"]["status"] == "failed"
    assert "boom at import" in by_name["broken_import"]["reason"]
    assert by_name["broken_register"]["status"] == "failed"
    assert "boom at registration" in by_name["broken_register"]["reason"]
    typo = by_name["typo_hook"]
    assert typo["status"] == "failed" and "oblix_register_modles" in typo["reason"]
    command = by_name["broken_command"]
    assert command["status"] == "failed" and "boom at [/command] registration" in command["reason"]
    missing = by_name["needs_missing"]
    install = "pip install 'oblix-missing-demo[fast]'"
    assert missing["status"] == "not installed" and missing["install"] == install
    assert missing["package"] == "oblix-broken" and missing["version"] == "1.0"
    table = commands.oblix(broken_site, home, "plugins", COLUMNS="250")  # brackets shown, not markup
    assert table.returncode == 0, table.stderr
    shown = " ".join(table.stdout.split())
    assert f"not installed: {install}" in shown and "boom at [/command] registration" in shown
    sessions = commands.oblix(broken_site, home, "sessions", "list")
    assert sessions.returncode == 0, sessions.stderr
    assert sessions.stderr.count("boom at import") == 1  # logged once, however often plugins load


def test_the_sdk_works_beside_broken_plugins(broken_site: Path, home: Path) -> None:
    script = (
        "import anyio\n"
        "from oblix import OblixClient\n"
        "async def main():\n"
        "    c = OblixClient()\n"
        "    sid = await c.create_session(title='works')\n"
        "    print(c.load_session(sid)['title'])\n"
        "    try:\n"
        "        await c.hook_model('needs_missing', 'x')\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "    await c.shutdown()\n"
        "anyio.run(main)\n"
    )
    environ = os.environ | {"PYTHONPATH": str(broken_site), "OBLIX_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    title, error = done.stdout.splitlines()
    assert title == "works"
    assert error.startswith("PluginError") and "pip install 'oblix-missing-demo[fast]'" in error
    assert "boom at import" in done.stderr  # logged, not raised


def test_strict_mode_makes_a_failing_plugin_an_error(broken_site: Path, home: Path) -> None:
    strict = commands.oblix(broken_site, home, "sessions", "list", OBLIX_STRICT_PLUGINS="1")
    assert strict.returncode == 1
    assert "boom at import" in strict.stderr


@pytest.mark.parametrize(
    ("hidden", "lookup", "extra"),
    [
        ("redis", "make_store('redis')", "redis"),
        ("boto3", "make_store('s3', bucket='b')", "s3"),
        ("openai", "model_class('openai')", "openai"),
        ("ollama", "model_class('ollama')", "ollama"),
        ("anthropic", "model_class('claude')", "anthropic"),
        ("llama_cpp", "model_class('llama_cpp')", "local"),  # the packaged model with it
    ],
)
def test_a_missing_optional_package_names_its_extra(hidden: str, lookup: str, extra: str) -> None:
    code = (
        f"import sys; sys.modules[{hidden!r}] = None\n"  # as if the package were not installed
        "from oblix_core.errors import OblixError\n"
        "from oblix_core.plugins.registry import Registry\n"
        "try:\n"
        f"    Registry.load().{lookup}\n"
        "except OblixError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR") and f"pip install 'oblix[{extra}]'" in out.stdout


def test_each_kind_of_plugin_failure_is_listed_with_what_to_fix(
    broken_site: Path, home: Path, broken_listing: dict[str, dict[str, Any]]
) -> None:
    by_name = broken_listing
    typo = by_name["typo_argument"]  # pluggy's validation, at registration with pluggy
    assert typo["status"] == "failed" and "'registr'" in typo["reason"]
    assert "oblix_register_agents(register)" in typo["reason"] and "\n" not in typo["reason"]
    clash = by_name["clash_store"]  # the first-party store keeps its name; both plugins are named
    assert clash["status"] == "failed" and "'file'" in clash["reason"]
    assert "clash_store" in clash["reason"] and "plugin 'file'" in clash["reason"]
    assert by_name["file"]["status"] == "loaded"
    silent = by_name["no_generate"]  # checked at the door
    assert silent["status"] == "failed" and "generate()" in silent["reason"]
    assert by_name["fragile_store"]["status"] == "loaded"  # a factory is checked when it builds one
    for command in (("sessions", "list"), ("models",), ("agents", "--json"), ("usage",), ("plugins",)):
        done = commands.oblix(broken_site, home, *command)
        assert done.returncode == 0, (command, done.stderr)
    assert done.stderr.count("{'registr'}") == 1  # logged once per process


def test_a_constructor_error_names_the_plugin_not_the_options(broken_site: Path, home: Path) -> None:
    done = commands.oblix(broken_site, home, "--store", "fragile", "sessions", "list")
    assert done.returncode == 1
    assert "session store 'fragile' (plugin 'fragile_store') failed to start: TypeError" in done.stderr
    assert "option" not in done.stderr.split("failed to start")[1].split(".")[0]


def test_strict_mode_shows_the_whole_traceback(broken_site: Path, home: Path) -> None:
    strict = commands.oblix(broken_site, home, "plugins", OBLIX_STRICT_PLUGINS="1")
    assert strict.returncode == 1
    assert "Traceback (most recent call last)" in strict.stderr


def test_an_unknown_store_says_no_plugin_provides_it(home: Path) -> None:
    with pytest.raises(PluginError, match="not installed, no plugin provides session store 'fancy'"):
        OblixClient(home=home, session_store="fancy")
    with pytest.raises(PluginError, match="Did you mean 'file'"):
        OblixClient(home=home, session_store="fiel")


def test_the_callers_own_plugin_with_a_misnamed_argument_is_explained() -> None:
    class Typo:
        @hookimpl
        def oblix_register_agents(self, registr):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(PluginError, match=r"\{'registr'\}.*oblix_register_agents\(register\)"):
        build_plugin_manager([Typo()])


def test_plugins_passed_as_objects_are_named_by_their_class() -> None:
    class Quiet:
        @hookimpl
        def oblix_register_models(self, register):  # type: ignore[no-untyped-def]
            pass

    names = {i.name for i in plugin_infos(build_plugin_manager([Quiet(), Quiet()]))}
    qualname = f"{__name__}.{Quiet.__qualname__}"
    assert {qualname, f"{qualname}#2"} <= names
    assert not any(n.isdigit() for n in names)


@pytest.mark.parametrize(
    ("kind", "source", "method"),
    [
        ("models", "class Part(ModelBackend):\n    model_type = 'x'\n", "generate()"),
        ("agents", "class Part(BaseAgent):\n    pass\n", "sample()"),
        (
            "session_stores",
            "class Part(SessionStore):\n    def create(self, session, *, idempotency_key=None): ...\n",
            "append_messages()",
        ),
    ],
)
def test_a_part_missing_a_required_method_is_refused_at_registration(
    home: Path, kind: str, source: str, method: str
) -> None:
    scope: dict[str, object] = {}
    exec("from oblix.plugin import BaseAgent, ModelBackend, SessionStore\n" + source, scope)

    class Plugin:
        @hookimpl
        def oblix_register_models(self, register):  # type: ignore[no-untyped-def]
            if kind == "models":
                register("x", scope["Part"])

        @hookimpl
        def oblix_register_agents(self, register):  # type: ignore[no-untyped-def]
            if kind == "agents":
                register("x", scope["Part"])

        @hookimpl
        def oblix_register_session_stores(self, register):  # type: ignore[no-untyped-def]
            if kind == "session_stores":
                register("x", scope["Part"])

    with pytest.raises(PluginError, match=re.escape(method)):
        OblixClient(home=home, plugins=[Plugin()])


def test_check_methods_is_the_helper_for_any_kind_of_part() -> None:
    from oblix_core.plugins.contract import check_methods, missing_methods

    class Embedder:
        def embed(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError

    class Mine(Embedder):
        pass

    class Done(Embedder):
        def embed(self, texts: list[str]) -> list[list[float]]:
            return [[0.0] for _ in texts]

    assert missing_methods(Mine, ["embed", "dimension"], base=Embedder) == ["embed", "dimension"]
    assert missing_methods(Done(), ["embed"], base=Embedder) == []
    with pytest.raises(PluginError, match=r"Embedder 'mine' .* does not implement embed\(\)"):
        check_methods("Embedder", "mine", Mine, ["embed"], base=Embedder)


def test_a_document_part_class_missing_a_required_method_is_refused_at_registration(home: Path) -> None:
    from oblix.plugin import DocumentIndex, Embedder

    class Mute(Embedder):
        name, dimension = "mute", 3

    class Half(DocumentIndex):
        def add(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    class Plugin:
        @hookimpl
        def oblix_register_embedders(self, register):  # type: ignore[no-untyped-def]
            register("mute", Mute)

    with pytest.raises(PluginError, match=r"Embedder 'mute' .* does not implement embed\(\)"):
        OblixClient(home=home, plugins=[Plugin()])

    class Indexes:
        @hookimpl
        def oblix_register_document_indexes(self, register):  # type: ignore[no-untyped-def]
            register("half", Half)

    with pytest.raises(PluginError, match=r"Document index 'half' .* does not implement .*search"):
        OblixClient(home=home, plugins=[Indexes()])


def test_an_agent_that_fails_to_start_is_skipped_unless_the_user_chose_it(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from oblix.plugin import AgentCheck, AgentState, BaseAgent

    class Broken(BaseAgent):
        def __init__(self, name: str | None = None, interval: float = 5.0) -> None:
            raise RuntimeError("no sensor here")

        def sample(self) -> AgentCheck:  # pragma: no cover - never built
            return AgentCheck("broken", AgentState.AVAILABLE)

    class Plugin:
        @hookimpl
        def oblix_register_agents(self, register):  # type: ignore[no-untyped-def]
            register("broken", Broken)

    client = OblixClient(home=home, plugins=[Plugin()])
    try:
        hooked = client.hook_default_agents()
        assert "broken" not in hooked and {"resource_monitor", "connectivity"} <= set(hooked)
        assert "agent 'broken' not hooked" in caplog.text and "no sensor here" in caplog.text
    finally:
        for agent in client.engine.agents.values():
            agent.stop()
        client.store.close()
    (home / "config.toml").write_text('[agents]\nenabled = ["broken"]\n')
    chosen = OblixClient(home=home, plugins=[Plugin()])
    try:
        with pytest.raises(PluginError, match=r"agent 'broken' \(plugin '.*Plugin'\) failed to start"):
            chosen.hook_default_agents()
    finally:
        chosen.store.close()
