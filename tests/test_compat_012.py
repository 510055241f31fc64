"""Oblix 0.1.2's public names, CLI flags and session files, used as its users use them.

The cloud model is Claude behind :mod:`tests.anthropic_double` (a loopback test double of
the Messages API: no real Anthropic endpoint is reachable here); local models are the
scripted test double (``tests/cli_plugin.py``). The client, CLI, store and agents are real.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oblix import Oblix, OblixClient
from oblix.plugin import AgentCheck, AgentState, BaseAgent, ConfigError
from oblix_core.compat import parse_model_spec
from oblix_core.testing import ScriptedPlugin
from tests import cli_plugin
from tests.anthropic_double import AnthropicDouble
from tests.conftest import FAST
from tests.server_process import OblixServer
from tests.support import commands

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-ant-compat-SECRET-0042"
SONNET = "claude-3-5-sonnet-20241022"
#: A session file as Oblix 0.1.2 wrote it under ~/.oblix/sessions/ (its documented shape).
LEGACY_SESSION: dict[str, Any] = {
    "id": "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a",
    "title": "Technical Support Chat",
    "created_at": "2023-07-15T14:30:22.123456",
    "updated_at": "2023-07-15T14:35:46.789012",
    "messages": [
        {
            "id": "msg_1",
            "role": "user",
            "content": "I can't install it.",
            "timestamp": "2023-07-15T14:30:22.123456",
        },
        {
            "id": "msg_2",
            "role": "assistant",
            "content": "Which OS?",
            "timestamp": "2023-07-15T14:30:25.456789",
        },
    ],
    "context": {"user_id": "user_789"},
    "metadata": {"category": "technical_support"},
}


@pytest.fixture
def double() -> Iterator[AnthropicDouble]:
    with AnthropicDouble(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_plugin.install(tmp_path_factory.mktemp("compat-site"))


@pytest.fixture
def cli_home(home: Path, plugin_site: Path, monkeypatch: pytest.MonkeyPatch, double: AnthropicDouble) -> Path:
    """``$OBLIX_HOME`` whose config.toml names a model that cannot load: flags must replace it."""
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", double.url)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OBLIX_DISABLE_PLUGINS", "system")  # no agents probing the network
    (home / "config.toml").write_text('[[models]]\ntype = "llama_cpp"\nname = "/nonexistent/model.gguf"\n')
    return home


oblix = commands.invoke


def no_key_on_disk(home: Path) -> None:
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


# -- a script written for 0.1.2 ------------------------------------------------------------

SCRIPT_012 = """
    import asyncio, os
    from oblix import Oblix, ModelType
    from oblix.agents import ResourceMonitor, ConnectivityAgent

    async def main():
        client = Oblix()
        key = os.environ["KEY"]
        ok = await client.hook_model(ModelType.CLAUDE, "claude-3-5-sonnet-20241022", api_key=key)
        assert ok is True
        assert client.hook_agent(ResourceMonitor()) is True
        assert client.hook_agent(ConnectivityAgent(latency_threshold=150.0)) is True
        print("models", client.list_models())
        print("model", client.get_model("claude", "claude-3-5-sonnet-20241022"))
        session_id = await client.create_session(title="Demo", metadata={"category": "demo"})
        client.use_session(session_id)
        response = await client.execute("Tell me about Oblix", session_id=session_id, stream=True)
        print("from", response["model_id"])
        once = await client.chat_once("And orchestration?", session_id=session_id)
        print("once", once["session_id"] == session_id, once["response"])
        streamed = await client.execute_streaming("Once more")
        resources = await client.get_resource_metrics()
        print("cpu", resources["cpu_percent"] >= 0)
        print("connectivity", sorted(await client.get_connectivity_metrics())[:1])
        await client.export_session(session_id, "demo_session.json")
        print("messages", len(client.load_session(session_id)["messages"]))
        await client.cleanup()

    asyncio.run(main())
"""


def test_a_012_script_runs_unchanged(double: AnthropicDouble, tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT_012))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env |= {"OBLIX_HOME": str(tmp_path / "home"), "ANTHROPIC_BASE_URL": double.url, "KEY": KEY}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"models {{'claude': ['{SONNET}']}}" in out
    assert f"'endpoint': '{double.url}'" in out and KEY not in out + done.stderr
    assert f"from claude:{SONNET}" in out and f"once True {double.answer}" in out
    assert out.count(double.answer) >= 3  # execute(stream=True) and execute_streaming printed theirs
    assert "cpu True" in out and "connectivity [" in out and "messages 6" in out
    assert "tokens" in done.stderr  # execute_streaming's display_metrics line
    exported = json.loads((tmp_path / "demo_session.json").read_text())
    assert exported["metadata"] == {"category": "demo"}
    no_key_on_disk(tmp_path / "home")


# -- the client surface ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_hook_returns_true_and_models_are_listed_without_keys(home: Path) -> None:
    assert Oblix is OblixClient
    async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:
        assert await client.hook_model("scripted", "a") is True
        assert await client.hook_model("scripted", "b", api_key=KEY) is True
        assert client.list_models() == {"scripted": ["a", "b"]}
        assert client.get_model("scripted", "b") == {"type": "scripted", "name": "b", "endpoint": None}
        assert client.get_model("scripted", "nope") is None
        assert KEY not in json.dumps(client.list_models()) + json.dumps(client.get_model("scripted", "b"))


@pytest.mark.anyio
async def test_chat_once_opens_a_session_and_continues_it(client: OblixClient) -> None:
    await client.hook_model("scripted", "m")
    first = await client.chat_once("hello")
    assert first["session_id"] and client.current_session_id == first["session_id"]
    again = await client.chat_once("again", session_id=first["session_id"])
    assert again["session_id"] == first["session_id"]
    assert len(client.load_session(first["session_id"])["messages"]) == 4
    other = await client.chat_once("elsewhere")
    assert other["session_id"] != first["session_id"]


@pytest.mark.anyio
async def test_execute_streaming_prints_and_returns(
    client: OblixClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.hook_model("scripted", "m")
    result = await client.execute_streaming("hi there", display_metrics=False)
    out = capsys.readouterr()
    assert result["response"] and result["response"] in out.out and out.err == ""
    await client.execute_streaming("with metrics")
    assert "scripted:m" in capsys.readouterr().err


@pytest.mark.anyio
async def test_start_chat_and_chat_streaming_return_the_session_id(client: OblixClient) -> None:
    await client.hook_model("scripted", "m")
    lines = iter(["first question", "second question", "/exit"])
    session_id = await client.start_chat(read_line=lambda _prompt: next(lines))
    assert session_id is not None
    assert [m["content"] for m in client.load_session(session_id)["messages"]][::2] == [
        "first question",
        "second question",
    ]
    more = iter(["third", "/exit"])
    assert await client.chat_streaming(session_id, read_line=lambda _prompt: next(more)) == session_id
    assert len(client.load_session(session_id)["messages"]) == 6


class _Probe(BaseAgent):
    default_name = "resource_monitor"

    def sample(self) -> AgentCheck:
        return AgentCheck(
            self.name, AgentState.AVAILABLE, reason="fine", metrics={"cpu_percent": 12.5, "odd": {1}}
        )


@pytest.mark.anyio
async def test_metrics_methods_return_json_safe_dicts_or_none(client: OblixClient) -> None:
    assert await client.get_resource_metrics() is None
    assert await client.get_connectivity_metrics() is None
    client.hook_agent(_Probe(name="mine"))  # found by its class's name, whatever its own
    metrics = await client.get_resource_metrics()
    assert metrics is not None and metrics["cpu_percent"] == 12.5 and metrics["state"] == "AVAILABLE"
    json.dumps(metrics)  # a set in the agent's metrics became text
    assert metrics["odd"] == "{1}"


@pytest.mark.anyio
async def test_cleanup_is_shutdown_and_leaves_the_host_alone(home: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    root_handlers = list(logging.getLogger().handlers)
    client = OblixClient(home=home, plugins=[ScriptedPlugin()])
    await client.hook_model("scripted", "m")
    await client.cleanup()
    assert client.models == [] and signal.getsignal(signal.SIGINT) is handler
    assert logging.getLogger().handlers == root_handlers


def test_model_specs() -> None:
    assert parse_model_spec("ollama:llama2:latest") == ("ollama", "llama2:latest")
    assert parse_model_spec("claude:claude-3-haiku-20240307") == ("claude", "claude-3-haiku-20240307")
    for bad in ("llama2", ":x", "ollama:", ""):
        with pytest.raises(ConfigError, match="TYPE:NAME"):
            parse_model_spec(bad, "--local-model")


@pytest.mark.anyio
async def test_one_cloud_key_for_two_providers_is_refused(home: Path) -> None:
    async with OblixClient(home=home, execution=FAST) as client:
        with pytest.raises(ConfigError, match="exactly one cloud provider"):
            await client.hook_model_specs(cloud=["openai:gpt-4o", f"claude:{SONNET}"], cloud_api_key=KEY)
        assert client.models == []


# -- the CLI flags ---------------------------------------------------------------------------


def test_chat_with_local_and_cloud_model_flags(cli_home: Path, double: AnthropicDouble) -> None:
    result = oblix(
        "chat", "--local-model", "scripted:echo", "--cloud-model", f"claude:{SONNET}",
        "--cloud-api-key", KEY, "-m", f"claude:{SONNET}", stdin="Where is Paris?\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert double.answer in result.output and "Chat ended. Session:" in result.output
    assert double.bodies[-1]["messages"][-1]["content"][-1]["text"] == "Where is Paris?"
    assert double.headers[-1].get("x-api-key") == KEY or KEY in double.headers[-1].get("authorization", "")
    local = oblix("chat", "--local-model", "scripted:echo", stdin="hi\n")
    assert local.exit_code == 0 and "echo: hi" in local.output  # the configured model was not loaded
    no_key_on_disk(cli_home)


def test_chat_flag_errors(cli_home: Path) -> None:
    alone = oblix("chat", "--cloud-api-key", KEY)
    assert alone.exit_code != 0 and "--cloud-model" in alone.output and KEY not in alone.output
    bad = oblix("chat", "--local-model", "llama2")
    assert bad.exit_code == 1 and "TYPE:NAME" in bad.output
    unknown = oblix("chat", "--cloud-model", "nosuch:model")
    assert unknown.exit_code == 1 and "nosuch" in unknown.output


def test_server_with_model_flags(tmp_path: Path, double: AnthropicDouble, plugin_site: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[[models]]\ntype = "llama_cpp"\nname = "/nonexistent/model.gguf"\n')
    env = {"ANTHROPIC_BASE_URL": double.url, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    args = ("--local-model", "scripted:echo", "--cloud-model", f"claude:{SONNET}", "--cloud-api-key", KEY)
    with OblixServer(home, *args, env=env) as server:
        body: dict[str, Any] = {"model": f"claude:{SONNET}", "messages": [{"role": "user", "content": "Hi"}]}
        answer = httpx.post(f"{server.root}/v1/chat/completions", json=body, timeout=30).json()
        log = server.log()
    assert answer["choices"][0]["message"]["content"] == double.answer, answer
    assert f"models: scripted:echo, claude:{SONNET}" in log and KEY not in log
    no_key_on_disk(home)


# -- sessions: view, create, and 0.1.2's files -----------------------------------------------


def test_sessions_create_view_and_import_of_012_files(cli_home: Path, tmp_path: Path) -> None:
    created = oblix("sessions", "create", "--title", "My Custom Session")
    assert created.exit_code == 0, created.output
    session_id = created.output.strip()
    viewed = oblix("sessions", "view", session_id[:8], "--json")
    assert json.loads(viewed.output)["title"] == "My Custom Session"
    legacy = tmp_path / "dot-oblix" / "sessions"
    legacy.mkdir(parents=True)
    (legacy / f"{LEGACY_SESSION['id']}.json").write_text(json.dumps(LEGACY_SESSION))
    other = LEGACY_SESSION | {"id": "7d9e8c6b-7a3e-5d45-8b8c-7a9b8c7d6e5d", "title": "Poetry"}
    (legacy / f"{other['id']}.json").write_text(json.dumps(other))
    (legacy / "broken.json").write_text('{"id": "x", "title": ')
    files = sorted(str(p) for p in legacy.glob("*.json"))
    imported = oblix("sessions", "import", *files, "--json")
    assert imported.exit_code == 1  # one file is broken; the others are imported all the same
    report = json.loads(imported.output)
    assert sorted(report["imported"].values()) == sorted([LEGACY_SESSION["id"], other["id"]])
    assert list(report["failed"]) == [str(legacy / "broken.json")]
    again = oblix("sessions", "import", *files[:2])
    assert again.exit_code == 0 and "2 skipped" in again.output
    shown = json.loads(oblix("sessions", "view", LEGACY_SESSION["id"], "--json").output)
    assert [m["content"] for m in shown["messages"]] == ["I can't install it.", "Which OS?"]
    assert (
        shown["context"] == {"user_id": "user_789"} and shown["metadata"]["category"] == "technical_support"
    )
