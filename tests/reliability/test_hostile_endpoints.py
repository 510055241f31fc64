"""Trials against hostile endpoints with DEFAULT settings: silent, truncating, resetting, echoing.

A black-holed cloud endpoint (accepts TCP, never answers) must hand over to the next
model within 15 s with default execution settings and default OpenAI timeouts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.testing import ScriptedPlugin
from tests.openai_loopback import LoopbackOpenAI

pytestmark = pytest.mark.reliability
TRIALS = 5


@pytest.mark.anyio
async def test_black_holed_endpoint_falls_back_within_15_seconds(home: Path) -> None:
    with LoopbackOpenAI("blackhole") as silent:
        async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:  # default settings
            await client.hook_model("openai", "silent", endpoint=silent.url, api_key="sk-unused-key")
            await client.hook_model("scripted", "local")
            client.engine.preference = "cloud-first"
            started = time.monotonic()
            result = await client.execute("hi", stream=False)
            elapsed = time.monotonic() - started
            assert result["model_id"] == "scripted:local"
            assert elapsed < 15, elapsed
            assert silent.chat_requests == 1  # no blind retry of a silent endpoint
            assert "timed out" in result["metrics"]["attempts"][0]["error"]
            # the silent model is cooling down: the next request does not wait for it again
            started = time.monotonic()
            await client.execute("again", stream=False)
            assert time.monotonic() - started < 2 and silent.chat_requests == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["truncated", "empty", "html", "kill", "echo401"])
async def test_repeated_bad_endpoints_never_store_a_bad_answer_as_good(home: Path, mode: str) -> None:
    with LoopbackOpenAI(mode) as bad:
        async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:
            await client.hook_model("openai", "bad", endpoint=bad.url, api_key="sk-hostile-0123456789")
            await client.hook_model("scripted", "local")
            client.engine.preference = "cloud-first"
            for _ in range(TRIALS):
                try:
                    await client.execute("hi", stream=False)
                except Exception as exc:  # an interrupted answer is an error, never a success
                    assert type(exc).__name__ == "StreamInterruptedError"
            for summary in client.list_sessions():
                for message in client.load_session(summary["id"])["messages"]:
                    if message.get("model_id") == "openai:bad":
                        assert message["metrics"].get("interrupted") is True
