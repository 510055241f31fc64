"""The main job from a terminal on the embedded defaults: packaged local model + file store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.config.settings import load_config
from oblix_core.errors import ConfigError
from oblix_core.terminal.chat import run_chat
from oblix_core.testing import ScriptedPlugin

pytestmark = pytest.mark.llama


def oblix(home: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"OBLIX_HOME": str(home)} | env
    return subprocess.run(
        [sys.executable, "-m", "oblix_core", *args],
        input=stdin,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_run_streams_and_persists_on_defaults(home: Path) -> None:
    done = oblix(home, "run", "What is the capital of France?", "--max-tokens", "24", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "llama_cpp:gemma-3-270m" in done.stderr  # the footer names the model and the session
    session_id = done.stderr.strip().rsplit("session ", 1)[1].rstrip("]")
    again = oblix(home, "run", "And of Italy?", "--session", session_id, "--json", "--max-tokens", "16")
    result = json.loads(again.stdout)
    assert result["session_id"] == session_id and result["metrics"]["history_messages_sent"] == 3
    shown = json.loads(oblix(home, "sessions", "show", session_id, "--json").stdout)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"] * 2
    assert shown["messages"][1]["model_id"] == "llama_cpp:gemma-3-270m"


def test_run_reports_bad_input_clearly(home: Path) -> None:
    done = oblix(home, "run", "hi", "--session", "../../etc")
    assert done.returncode == 1 and "Invalid session id" in done.stderr and "Traceback" not in done.stderr
    done = oblix(home, "run", "hi", "--model", "openai:gpt-4o-mini")
    assert done.returncode == 1 and "is not one of the available models" in done.stderr


def test_chat_loop_with_commands(home: Path) -> None:
    script = "/models\n/status\nWhat is the capital of France?\n/new\n/list\n/exit\n"
    done = oblix(home, "chat", stdin=script)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "llama_cpp:gemma-3-270m  (local, context 4096)" in out
    assert "resource_monitor:" in out and "ai> " in out and "New session" in out
    assert "Chat ended. Session:" in out
    sessions = json.loads(oblix(home, "sessions", "list", "--json").stdout)
    assert len(sessions) == 1 and sessions[0]["message_count"] == 2  # /new stores nothing by itself


def test_models_lists_the_defaults(home: Path) -> None:
    done = oblix(home, "models", "--json")
    listed = json.loads(done.stdout)
    assert [m["model_id"] for m in listed["models"]] == ["llama_cpp:gemma-3-270m"]
    assert {"llama_cpp", "openai", "ollama"} <= set(listed["backends"])
    with_key = json.loads(oblix(home, "models", "--json", OPENAI_API_KEY="sk-from-env").stdout)
    assert [m["model_id"] for m in with_key["models"]] == ["llama_cpp:gemma-3-270m", "openai:gpt-4o-mini"]
    assert "sk-from-env" not in json.dumps(with_key)


def test_config_file_models_and_key_from_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "config.toml").write_text(
        '[routing]\npreference = "cloud-first"\n\n'
        '[[models]]\ntype = "openai"\nname = "my-model"\nendpoint = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "MY_KEY"\ncontext_window = 1000\n'
    )
    monkeypatch.setenv("MY_KEY", "sk-secret-from-env")
    config = load_config(home)
    assert config.preference == "cloud-first" and config.models[0]["name"] == "my-model"
    listed = json.loads(oblix(home, "models", "--json", MY_KEY="sk-secret-from-env").stdout)
    assert (
        listed["models"][0]["model_id"] == "openai:my-model" and listed["models"][0]["context_window"] == 1000
    )
    assert "sk-secret-from-env" not in (home / "config.toml").read_text()
    (home / "config.toml").write_text("[routing]\npreference = 'sideways'\n")
    with pytest.raises(ConfigError, match="preference"):
        load_config(home)
    done = oblix(home, "sessions", "list")
    assert done.returncode == 1 and "preference" in done.stderr


@pytest.mark.anyio
async def test_execute_chat_true_uses_the_same_loop(
    home: Path, make_client: Callable[..., OblixClient]
) -> None:
    scripted = ScriptedPlugin()
    client = make_client(home=home, plugins=[scripted])
    await client.hook_model("scripted", "m")
    lines = iter(["second message", "/exit"])
    result = await run_chat(client, "first message", read_line=lambda _: next(lines))
    assert result["response"] == "echo: second message"
    contents = [m["content"] for m in client.load_session(result["session_id"])["messages"]]
    assert contents == ["first message", "echo: first message", "second message", "echo: second message"]
