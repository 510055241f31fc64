"""Every code sample of docs/plugins.md runs: the Python blocks in order in one namespace (each
block is one file of a plugin or its tests), the TOML blocks parse, the samples' contract suites
run here (the SQLite store written from the reference passes the whole store contract), and the
samples' plugins work through the real hooks of a client and the command line."""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from oblix import OblixClient
from oblix.plugin import MissingDependency
from oblix.testing import AgentContract, ModelBackendContract, SessionStoreContract

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def _run_samples() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "plugin_docs"}
    for language, code in BLOCKS:
        if language != "python":
            continue
        first = code.splitlines()[0]
        if "raises MissingDependency" in first:
            with pytest.raises(MissingDependency):
                exec(compile(code, f"{DOC}:{first}", "exec"), dict(namespace))
            continue
        exec(compile(code, f"{DOC}:{first}", "exec"), namespace)
    return namespace


SAMPLES = _run_samples()
CONTRACTS = (SessionStoreContract, ModelBackendContract, AgentContract)
SUITES = {
    name: cls
    for name, cls in SAMPLES.items()
    if isinstance(cls, type) and issubclass(cls, CONTRACTS) and cls not in CONTRACTS
}
globals().update({f"TestDocs{name.removeprefix('Test')}": cls for name, cls in SUITES.items()})


def test_the_samples_cover_every_kind_and_its_contract_suite() -> None:
    assert {"python", "toml"} <= {language for language, _ in BLOCKS}
    assert {"TestShout", "TestSqliteStore", "TestDiskAgent"} <= set(SUITES)
    plugin = types.ModuleType("plugin_docs")
    plugin.__dict__.update(SAMPLES)
    assert {"oblix_register_models", "oblix_register_session_stores", "oblix_register_agents"} <= set(
        vars(plugin)
    )


@pytest.mark.parametrize("code", [c for language, c in BLOCKS if language == "toml"])
def test_each_toml_sample_parses(code: str) -> None:
    assert tomllib.loads(code)


def _plugin() -> types.ModuleType:
    plugin = types.ModuleType("plugin_docs")
    plugin.__dict__.update({k: v for k, v in SAMPLES.items() if k.startswith("oblix_")})
    return plugin


@pytest.mark.anyio
async def test_the_sample_plugins_work_through_the_real_hooks(home: Path) -> None:
    async with OblixClient(home=home, session_store="sqlite", plugins=[_plugin()]) as client:
        assert client.store.describe()["path"] == str(home / "sessions.sqlite3")  # oblix_home()
        await client.hook_model("shout", "loud")
        answer = await client.execute("pay with 4111 1111 1111 1111 please", stream=False)
        assert answer["response"].split() == ["PAY", "WITH", "[CARD]", "PLEASE"]  # redacted, shouted
        stored = client.load_session(answer["session_id"])
        assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
        assert "disk" in client.hook_default_agents()


def test_the_command_sample_and_its_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SAMPLES["test_hello"](tmp_path, monkeypatch)
