"""Red team of issue 29 (plugin authors): a careless or hostile third-party package, really
installed with pip, must never take Oblix down, take over its commands or its first-party
plugins, or corrupt its output; ``oblix plugins new`` must not write a package that shadows
Oblix's own modules, plugins or commands.

One distribution, ``oblix-redteam``, holds every misbehaving plugin beside one that works
(``good``: a backend answering in capitals); it is pip-installed into a folder put on
``PYTHONPATH`` of real ``oblix`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oblix_core.cli.plugins_new import write_package
from oblix_core.errors import ConfigError, PluginError
from tests.support import commands

HOOK = "from oblix.plugin import hookimpl\n@hookimpl\n"
#: entry-point name -> module source (each module is ``oblix_redteam_<name>``)
HOSTILE = {
    "good": (
        "from oblix.plugin import ModelBackend, StreamChunk, hookimpl\n"
        "class Loud(ModelBackend):\n"
        "    model_type = 'loud'\n"
        "    default_local = True\n"
        "    async def generate(self, request):\n"
        "        yield StreamChunk(request.messages[-1].content.upper())\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    register('loud', Loud)\n"
    ),
    # sys.exit() while being imported, while registering parts, while adding commands
    "exits_at_import": "import sys\nsys.exit(3)\n",
    "exits_registering": HOOK + "def oblix_register_models(register):\n    raise SystemExit(4)\n",
    "exits_adding_commands": HOOK + "def oblix_register_commands(cli):\n    raise SystemExit(5)\n",
    # prints to stdout, where answers and --json go
    "chatty": (
        "print('CHATTY AT IMPORT')\n"
        + HOOK
        + "def oblix_register_models(register):\n    print('CHATTY REGISTERING')\n"
        + HOOK
        + "def oblix_register_session_stores(register):\n    print('CHATTY STORES')\n"
    ),
    # takes over built-in commands
    "hijack": (
        HOOK + "def oblix_register_commands(cli):\n"
        "    import click\n"
        "    @cli.command('plugins')\n"
        "    def plugins():\n"
        "        click.echo('HIJACKED')\n"
        "    @cli.command('sessions')\n"
        "    def sessions():\n"
        "        click.echo('HIJACKED')\n"
    ),
    # replaces a subcommand of a built-in group; adds one beside it (allowed)
    "sub_hijack": (
        HOOK + "def oblix_register_commands(cli):\n"
        "    cli.commands['sessions'].command('list')(lambda: print('HIJACKED'))\n"
    ),
    "sub_add": (
        HOOK + "def oblix_register_commands(cli):\n"
        "    cli.commands['sessions'].command('shout')(lambda: print('SHOUT'))\n"
    ),
    # plugins that would silently do nothing: a hook function without @hookimpl, no hooks at all,
    # an entry point at a module another entry point already loads
    "unmarked": "def oblix_register_models(register):\n    raise AssertionError('never called')\n",
    "hookless": "VALUE = 1\n",
    "async_hook": HOOK
    + "async def oblix_register_models(register):\n    raise AssertionError('never run')\n",
    # (and file_again, an entry point at Oblix's own oblix_file: see hostile_site)
    # adds a command, then fails: its command must not stay behind
    "half_commands": (
        HOOK + "def oblix_register_commands(cli):\n"
        "    import click\n"
        "    @cli.command('half-done')\n"
        "    def half():\n"
        "        click.echo('HALF')\n"
        "    raise RuntimeError('failed after adding half-done')\n"
    ),
    # an entry point named like a first-party plugin's
    "openai": HOOK + "def oblix_register_models(register):\n    pass\n",
    # wrong shapes: a name that is not a string, a coroutine where an async generator belongs,
    # a coroutine where a thread runs a plain function
    "unnamed": HOOK + "def oblix_register_session_stores(register):\n    register(None, lambda **o: None)\n",
    "coroutine_generate": (
        "from oblix.plugin import ModelBackend, StreamChunk, hookimpl\n"
        "class Once(ModelBackend):\n"
        "    model_type = 'once'\n"
        "    async def generate(self, request):\n"
        "        return StreamChunk('not a stream')\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    register('once', Once)\n"
    ),
    "coroutine_sample": (
        "from oblix.plugin import AgentCheck, AgentState, BaseAgent, hookimpl\n"
        "class Sleepy(BaseAgent):\n"
        "    async def sample(self):\n"
        "        return AgentCheck('sleepy', AgentState.AVAILABLE)\n"
        "@hookimpl\n"
        "def oblix_register_agents(register):\n"
        "    register('sleepy', Sleepy)\n"
    ),
    # an instance where the class belongs
    "instance": (
        "from oblix.plugin import ModelBackend, StreamChunk, hookimpl\n"
        "class Solo(ModelBackend):\n"
        "    async def generate(self, request):\n"
        "        yield StreamChunk('x')\n"
        "@hookimpl\n"
        "def oblix_register_models(register):\n"
        "    register('solo', Solo('m'))\n"
    ),
    # parts that fail when built: sys.exit() in a store's constructor, a reader and an embedder
    # whose factories raise
    "store_exit": (
        HOOK + "def oblix_register_session_stores(register):\n"
        "    def exiting(**options):\n"
        "        raise SystemExit(7)\n"
        "    register('exiting', exiting)\n"
    ),
    "bad_reader": (
        HOOK + "def oblix_register_document_readers(register):\n"
        "    def broken():\n"
        "        raise RuntimeError('reader bug')\n"
        "    register('broken', broken)\n"
    ),
    "bad_embedder": (
        HOOK + "def oblix_register_embedders(register):\n"
        "    def broken(model=None):\n"
        "        raise TypeError('embedder bug')\n"
        "    register('broken', broken)\n"
    ),
    # registers Oblix's own file store again (the same class), then fails
    "same_part": (
        "from oblix_file import FileSessionStore\n" + HOOK + "def oblix_register_session_stores(register):\n"
        "    register('file', FileSessionStore)\n"
        "    raise RuntimeError('failed after registering file again')\n"
    ),
    # two plugins adding the same command; an error pages long
    "twin_a": HOOK + "def oblix_register_commands(cli):\n    cli.command('twin')(lambda: print('A'))\n",
    "twin_b": HOOK + "def oblix_register_commands(cli):\n    cli.command('twin')(lambda: print('B'))\n",
    "verbose": "raise ValueError('the whole story ' * 2000)\n",
}


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``oblix-redteam`` built from source and installed by pip into a folder of its own."""
    source = tmp_path_factory.mktemp("redteam-src")
    modules = [f"oblix_redteam_{name}" for name in HOSTILE]
    points = "".join(f'{name} = "oblix_redteam_{name}"\n' for name in HOSTILE)
    points += 'file_again = "oblix_file"\n'  # Oblix's own file store's module, a second time
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "oblix-redteam"
            version = "6.6.6"

            [tool.setuptools]
            py-modules = {modules}

            [project.entry-points.oblix]
            """
        ).format(modules=json.dumps(modules))
        + points
    )
    for name, code in HOSTILE.items():
        (source / f"oblix_redteam_{name}.py").write_text(code)
    target = tmp_path_factory.mktemp("redteam-site")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, timeout=300)
    return target


#: ``oblix plugins --json``, by plugin name
Listing = dict[str, dict[str, object]]


def _listing(site: Path, home: Path, **env: str) -> Listing:
    listed = commands.oblix(site, home, "plugins", "--json", **env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return {p["name"]: p for p in json.loads(listed.stdout)}  # stdout is JSON alone


@pytest.fixture(scope="module")
def hostile_listing(hostile_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Listing:
    """``oblix plugins --json`` beside the hostile plugins, on an empty home: run once for the
    module, since every test that only reads it would get the same listing."""
    home = tmp_path_factory.mktemp("listing-home")
    return _listing(hostile_site, home)


def test_sys_exit_in_a_plugin_is_contained_and_listed(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing
    assert by_name["good"]["status"] == "loaded"
    for name, code in (("exits_at_import", 3), ("exits_registering", 4), ("exits_adding_commands", 5)):
        assert by_name[name]["status"] == "failed", by_name[name]
        assert f"SystemExit: {code}" in str(by_name[name]["reason"])
    for command in (("sessions", "list"), ("agents", "--json"), ("plugins",)):
        done = commands.oblix(hostile_site, home, *command)
        assert done.returncode == 0, (command, done.stderr)


@pytest.mark.slow  # the tiers count `oblix server`, even --help, as starting a server
def test_oblix_server_help_works_beside_hostile_plugins(hostile_site: Path, home: Path) -> None:
    done = commands.oblix(hostile_site, home, "server", "--help")
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout and "CHATTY" not in done.stdout


def test_the_sdk_works_beside_a_plugin_that_exits(hostile_site: Path, home: Path) -> None:
    script = (
        "import anyio\n"
        "from oblix import OblixClient\n"
        "async def main():\n"
        "    async with OblixClient() as c:\n"
        "        await c.hook_model('loud', 'x', local=True)\n"
        "        r = await c.execute('still here', stream=False)\n"
        "        print('ANSWER', r['response'])\n"
        "anyio.run(main)\n"
    )
    environ = os.environ | {"PYTHONPATH": str(hostile_site), "OBLIX_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ANSWER STILL HERE"]  # nothing a plugin printed
    assert "CHATTY AT IMPORT" in done.stderr


def test_a_plugin_printing_never_reaches_stdout(hostile_site: Path, home: Path) -> None:
    (home / "config.toml").write_text('[[models]]\ntype = "loud"\nname = "x"\nlocal = true\n')
    by_name = _listing(hostile_site, home)  # parses: the plugin's prints went to stderr
    assert by_name["chatty"]["status"] == "loaded"
    answered = commands.oblix(hostile_site, home, "run", "--no-stream", "quiet please")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip() == "QUIET PLEASE"
    assert "CHATTY AT IMPORT" in answered.stderr


def test_a_plugin_cannot_take_over_a_builtin_command(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing  # `oblix plugins --json` is still Oblix's
    hijack = by_name["hijack"]
    assert hijack["status"] == "failed"
    assert "'plugins'" in str(hijack["reason"]) and "oblix" in str(hijack["reason"])
    sessions = commands.oblix(hostile_site, home, "sessions", "list")
    assert sessions.returncode == 0 and "HIJACKED" not in sessions.stdout, sessions.stdout


def test_a_failing_command_plugin_leaves_no_command_behind(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing
    assert by_name["half_commands"]["status"] == "failed"
    assert "failed after adding half-done" in str(by_name["half_commands"]["reason"])
    half = commands.oblix(hostile_site, home, "half-done")
    assert half.returncode != 0 and "HALF" not in half.stdout


def test_an_entry_point_named_like_a_first_party_plugin_does_not_replace_it(hostile_listing: Listing) -> None:
    entries = [p for p in hostile_listing.values() if str(p["name"]).startswith("openai")]
    ours = [p for p in entries if p["package"] == "oblix"]
    theirs = [p for p in entries if p["package"] == "oblix-redteam"]
    assert [p["status"] for p in ours] == ["loaded"] and ours[0]["module"] == "oblix_openai"
    assert [p["status"] for p in theirs] == ["failed"], entries
    reason = str(theirs[0]["reason"])
    assert "'openai'" in reason and "oblix-redteam" in reason and "rename" in reason
    assert len(reason) < 400  # one readable line, not pluggy's dump of every plugin


def test_parts_of_the_wrong_shape_are_refused_at_the_door(hostile_listing: Listing) -> None:
    by_name = hostile_listing
    unnamed = by_name["unnamed"]
    assert (
        unnamed["status"] == "failed"
        and "name" in str(unnamed["reason"])
        and "None" in str(unnamed["reason"])
    )
    once = by_name["coroutine_generate"]
    assert once["status"] == "failed" and "generate()" in str(once["reason"]), once
    assert "async generator" in str(once["reason"])
    sleepy = by_name["coroutine_sample"]
    assert sleepy["status"] == "failed" and "sample()" in str(sleepy["reason"]), sleepy


def test_strict_mode_shows_the_traceback_of_a_plugin_that_exits(hostile_site: Path, home: Path) -> None:
    strict = commands.oblix(
        hostile_site, home, "sessions", "list", OBLIX_STRICT_PLUGINS="1", OBLIX_LOAD_PLUGINS="exits_at_import"
    )
    assert strict.returncode == 1
    assert "Traceback (most recent call last)" in strict.stderr and "sys.exit(3)" in strict.stderr
    assert "exits_at_import" in strict.stderr
    for plugin, said in (
        ("exits_registering", "failed: SystemExit: 4 (it called sys.exit()"),
        ("hijack", "failed: replaces the command 'plugins'"),
        ("coroutine_generate", "failed: Model backend 'once'"),
    ):
        strict = commands.oblix(
            hostile_site, home, "sessions", "list", OBLIX_STRICT_PLUGINS="1", OBLIX_LOAD_PLUGINS=plugin
        )
        assert strict.returncode == 1 and "Traceback (most recent call last)" in strict.stderr, strict.stderr
        assert f"Error: Plugin {plugin!r} (oblix_redteam_{plugin}) {said}" in strict.stderr, strict.stderr


def test_the_callers_own_plugin_with_a_coroutine_generate_is_refused(home: Path) -> None:
    from oblix import OblixClient
    from oblix.plugin import ModelBackend, StreamChunk, hookimpl

    class Once(ModelBackend):
        model_type = "once"

        async def generate(self, request):  # type: ignore[override]  # the mistake under test
            return StreamChunk("not a stream")

    class Plugin:
        @hookimpl
        def oblix_register_models(self, register):
            register("once", Once)

    with pytest.raises(PluginError, match=r"generate\(\).*async generator"):
        OblixClient(home=home, plugins=[Plugin()])


# -- oblix plugins new: names that would shadow Oblix ---------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "clash"),
    [
        ("core", "backend", "oblix_core"),  # Oblix's own core package
        ("file", "store", "oblix_file"),  # a first-party plugin's package and entry point
        ("server", "command", "oblix_server"),
        ("redis", "store", "oblix_redis"),
    ],
)
def test_new_refuses_a_name_that_shadows_an_installed_package(
    tmp_path: Path, name: str, kind: str, clash: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{clash}.*(already|shadow)"):
        write_package(name, kind, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["plugins", "run", "sessions", "chat", "Usage"])
def test_new_refuses_a_command_named_like_a_builtin(tmp_path: Path, name: str) -> None:
    done = commands.invoke("plugins", "new", name, "--kind", "command", "--dir", str(tmp_path))
    assert done.exit_code == 1 and f"`oblix {name.lower()}` exists already" in done.output, done.output
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_a_command_another_plugin_has(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`oblix hello-world` exists already"):
        write_package("hello_world", "command", tmp_path, commands=["run", "hello-world"])
    assert list(tmp_path.iterdir()) == []


def test_new_accepts_awkward_but_valid_names(tmp_path: Path) -> None:
    for name, package in (
        ("My-Store", "oblix_my_store"),
        ("class", "oblix_class"),
        ("run", "oblix_run"),
        ("\u212aelvin", "oblix_kelvin"),
    ):
        target = write_package(name, "store", tmp_path)  # a store named run adds no command
        assert (target / package / "__init__.py").is_file()
    for bad in ("ünïcode", "-x", "", "1st", "a b"):
        with pytest.raises(ConfigError, match="cannot name a plugin"):
            write_package(bad, "backend", tmp_path)


def test_an_instance_registered_for_a_class_is_named_as_such(hostile_listing: Listing) -> None:
    reason = str(hostile_listing["instance"]["reason"])
    assert "is an instance of oblix_redteam_instance.Solo" in reason and "register the class" in reason
    assert " at 0x" not in reason


def test_a_constructor_that_exits_is_a_plugin_error(hostile_site: Path, home: Path) -> None:
    done = commands.oblix(hostile_site, home, "--store", "exiting", "sessions", "list")
    assert done.returncode == 1
    assert "session store 'exiting' (plugin 'store_exit') failed to start: SystemExit: 7" in done.stderr


def test_a_broken_document_reader_loses_its_files_not_every_document(hostile_site: Path, home: Path) -> None:
    note = home.parent / "note.txt"
    note.write_text("Plugins never take Oblix down.\n")
    added = commands.oblix(hostile_site, home, "docs", "add", str(note), "--json")
    assert added.returncode == 0, added.stderr
    assert "document reader 'broken' left out" in added.stderr and "reader bug" in added.stderr
    assert added.stderr.count("reader bug") == 1


def test_an_embedder_failing_to_start_names_its_plugin(hostile_site: Path, home: Path) -> None:
    (home / "config.toml").write_text('[documents]\nembedder = "broken"\n')
    note = home.parent / "note.txt"
    note.write_text("Plugins never take Oblix down.\n")
    added = commands.oblix(hostile_site, home, "docs", "add", str(note))
    assert added.returncode == 1
    assert (
        "embedder 'broken' (plugin 'bad_embedder') failed to start: TypeError: embedder bug" in added.stderr
    )
    assert "unexpected" not in added.stderr


def test_a_failing_plugin_that_registered_oblixs_own_part_again_does_not_take_it_away(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing
    assert by_name["same_part"]["status"] == "failed"
    assert [s["store"] for s in by_name["file"]["stores"]] == ["file"]
    sessions = commands.oblix(hostile_site, home, "sessions", "list")
    assert sessions.returncode == 0, sessions.stderr


@pytest.mark.anyio
async def test_hook_backend_refuses_an_instance_with_a_coroutine_generate(home: Path) -> None:
    from oblix import OblixClient
    from oblix.plugin import ModelBackend, StreamChunk

    class Once(ModelBackend):
        model_type = "once"

        async def generate(self, request):  # type: ignore[override]  # the mistake under test
            return StreamChunk("not a stream")

    async with OblixClient(home=home) as client:
        with pytest.raises(PluginError, match=r"generate\(\) is a coroutine"):
            await client.hook_backend(Once("m"))
        assert "once:m" not in client.engine.models


def test_two_plugins_adding_the_same_command_one_keeps_it_the_other_is_named(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing
    loaded = [n for n in ("twin_a", "twin_b") if by_name[n]["status"] == "loaded"]
    failed = [n for n in ("twin_a", "twin_b") if by_name[n]["status"] == "failed"]
    assert len(loaded) == len(failed) == 1, by_name
    reason = str(by_name[failed[0]]["reason"])
    assert "'twin'" in reason and f"plugin {loaded[0]!r}" in reason
    done = commands.oblix(hostile_site, home, "twin")
    assert done.returncode == 0 and done.stdout == loaded[0][-1].upper() + "\n", done.stderr
    assert len(done.stderr) < 5_000  # the pages-long error is one short line in the log too


def test_a_pages_long_error_is_one_short_line_in_the_listing(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    reason = str(hostile_listing["verbose"]["reason"])
    assert reason.startswith("ValueError: the whole story") and len(reason) <= 300
    table = commands.oblix(hostile_site, home, "plugins", COLUMNS="80")
    assert table.returncode == 0 and len(table.stdout) < 20_000, len(table.stdout)


@pytest.mark.extras
def test_awkward_names_make_packages_that_install_and_pass_their_own_tests(tmp_path: Path) -> None:
    from tests.test_plugins_new import _fresh_venv

    made = {
        "my_store": write_package("My-Store", "store", tmp_path),  # capitals and a dash
        "class": write_package("class", "command", tmp_path),  # a Python keyword
        "x2_loud": write_package("X2--Loud", "backend", tmp_path),  # digits, a double dash
        "k_agent": write_package("\u212a-agent", "agent", tmp_path),  # the Kelvin sign lowers to k
    }
    python = _fresh_venv(tmp_path / "venv")
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    installed = subprocess.run(
        [*pip, *(arg for p in made.values() for arg in ("-e", str(p)))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    for package in made.values():
        tested = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert tested.returncode == 0 and " passed" in tested.stdout, tested.stdout + tested.stderr
    listed = subprocess.run(
        [python, "-m", "oblix_core", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=commands.environ(None, tmp_path / "home"),
    )
    status = {p["name"]: p["status"] for p in json.loads(listed.stdout)}
    assert {name: status.get(name) for name in made} == dict.fromkeys(made, "loaded"), status


@pytest.mark.anyio
async def test_every_part_a_client_builds_finds_its_home_with_oblix_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only stores: backends, agents and document indexes built by ``OblixClient(home=X)``
    keep their files under X, whatever ``$OBLIX_HOME`` says (the hookspecs promise it)."""
    from oblix import OblixClient
    from oblix.plugin import (
        AgentCheck,
        AgentState,
        BaseAgent,
        ModelBackend,
        StreamChunk,
        hookimpl,
        oblix_home,
    )

    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "elsewhere"))
    home = tmp_path / "mine"
    home.mkdir()
    (home / "config.toml").write_text('[agents]\nenabled = ["homely"]\n')
    seen: dict[str, Path] = {}

    class Backend(ModelBackend):
        model_type = "homely"

        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            seen["backend"] = oblix_home()

        async def generate(self, request):  # type: ignore[no-untyped-def]
            yield StreamChunk("x")

    class Agent(BaseAgent):
        default_name = "homely"

        def __init__(self, name=None, interval=5.0):  # type: ignore[no-untyped-def]
            super().__init__(name, interval)
            seen["agent"] = oblix_home()

        def sample(self) -> AgentCheck:
            return AgentCheck(self.name, AgentState.AVAILABLE)

    def index(**options):  # type: ignore[no-untyped-def]
        seen["index"] = oblix_home()
        raise RuntimeError("only its home was wanted")

    class Plugin:
        @hookimpl
        def oblix_register_models(self, register):  # type: ignore[no-untyped-def]
            register("homely", Backend)

        @hookimpl
        def oblix_register_agents(self, register):  # type: ignore[no-untyped-def]
            register("homely", Agent)

        @hookimpl
        def oblix_register_document_indexes(self, register):  # type: ignore[no-untyped-def]
            register("homely", index)

    async with OblixClient(home=home, plugins=[Plugin()]) as client:
        await client.hook_model("homely", "m")
        assert client.hook_default_agents() == ["homely"]
        with pytest.raises(PluginError, match="only its home was wanted"):
            client.use_document_index("homely")
    assert seen == {"backend": home, "agent": home, "index": home}


def test_every_error_a_first_party_plugin_defines_is_caught_by_an_exported_family() -> None:
    """``oblix.errors`` exports the core's errors; a plugin's own (``oblix_file.FileStoreError``)
    must subclass an exported one, so that users catching the family catch it."""
    import importlib
    import pkgutil

    import oblix.errors
    from oblix.errors import OblixError

    exported = tuple(getattr(oblix.errors, name) for name in oblix.errors.__all__)
    plugins = Path(__file__).resolve().parents[1] / "plugins"
    found = []
    for info in pkgutil.walk_packages([str(plugins)]):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an extra that is not installed here
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, OblixError)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    assert any(cls.__name__ == "FileStoreError" for cls in found)
    families = tuple(e for e in exported if e is not OblixError)  # a family narrower than any error
    orphans = [c.__qualname__ for c in found if not issubclass(c, families)]
    assert orphans == []


def test_a_plugin_cannot_replace_a_subcommand_but_may_add_one(
    hostile_site: Path, home: Path, hostile_listing: Listing
) -> None:
    by_name = hostile_listing
    assert by_name["sub_hijack"]["status"] == "failed"
    assert "`oblix sessions list`" in str(by_name["sub_hijack"]["reason"])
    assert by_name["sub_add"]["status"] == "loaded"
    listed = commands.oblix(hostile_site, home, "sessions", "list")
    assert listed.returncode == 0 and "HIJACKED" not in listed.stdout, listed.stdout
    added = commands.oblix(hostile_site, home, "sessions", "shout")
    assert added.returncode == 0 and added.stdout == "SHOUT\n", added.stderr


def test_plugins_that_would_silently_do_nothing_are_listed_as_failed(hostile_listing: Listing) -> None:
    by_name = hostile_listing
    unmarked = by_name["unmarked"]
    assert unmarked["status"] == "failed"
    assert "oblix_register_models is not marked @hookimpl" in str(unmarked["reason"])
    hookless = by_name["hookless"]
    assert hookless["status"] == "failed" and "implements no hook" in str(hookless["reason"])
    asynchronous = by_name["async_hook"]
    assert asynchronous["status"] == "failed"
    assert "oblix_register_models is async" in str(asynchronous["reason"]) and "plain def" in str(
        asynchronous["reason"]
    )
    again = by_name["file_again"]
    assert again["status"] == "failed" and "already loaded as the plugin 'file'" in str(again["reason"])
    assert len(str(again["reason"])) < 300  # not pluggy's dump of every plugin
    assert by_name["file"]["status"] == "loaded"


def test_the_callers_own_plugins_that_would_do_nothing_are_refused(home: Path) -> None:
    from oblix import OblixClient
    from oblix.plugin import hookimpl
    from oblix.testing import ScriptedPlugin

    class Unmarked:
        def oblix_register_models(self, register):  # type: ignore[no-untyped-def]
            raise AssertionError("never called")

    class AsyncStart:
        @hookimpl
        async def oblix_request_start(self, request):  # type: ignore[no-untyped-def]
            raise AssertionError("never run")

    scripted = ScriptedPlugin()
    for plugins, said in (
        ([scripted, scripted], "already loaded as the plugin"),
        ([Unmarked()], "oblix_register_models is not marked @hookimpl"),
        ([object()], "implements no hook"),
        ([AsyncStart()], "oblix_request_start is async"),
    ):
        with pytest.raises(PluginError, match=said):
            OblixClient(home=home, plugins=plugins)


def test_a_typo_in_the_allow_or_deny_list_is_said_once_with_the_close_match(
    hostile_site: Path, home: Path
) -> None:
    done = commands.oblix(
        hostile_site, home, "sessions", "list", OBLIX_LOAD_PLUGINS="good,opneai", OBLIX_DISABLE_PLUGINS="s33"
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stderr.count("OBLIX_LOAD_PLUGINS names 'opneai'") == 1
        and "Did you mean 'openai'?" in done.stderr
    )
    assert "OBLIX_DISABLE_PLUGINS names 's33'" in done.stderr and "Did you mean 's3'?" in done.stderr
    quiet = commands.oblix(hostile_site, home, "sessions", "list", OBLIX_LOAD_PLUGINS="good")
    assert "names" not in quiet.stderr


@pytest.mark.parametrize(
    ("name", "kind", "owner"),
    [
        ("claude", "backend", "anthropic"),
        ("connectivity", "agent", "system"),
        ("Resource-Monitor", "agent", "system"),
    ],
)
def test_new_refuses_a_part_name_another_plugin_registers(
    tmp_path: Path, name: str, kind: str, owner: str
) -> None:
    # the package and entry point names are free, but the part it registers would clash once installed
    with pytest.raises(
        ConfigError,
        match=rf"'{name.lower().replace('-', '_')}' is already registered by the plugin '{owner}'",
    ):
        write_package(name, kind, tmp_path)
    assert list(tmp_path.iterdir()) == []
