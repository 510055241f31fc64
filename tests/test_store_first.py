"""A request in a stored session reaches the store before any model runs: with the store down it
fails fast with the store's error, the model is never called, and health reads stay quiet."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from oblix import OblixClient
from oblix_core.errors import OblixError
from oblix_core.testing import ScriptedPlugin
from tests.redis_servers import RedisServer, unique_prefix


@pytest.mark.anyio
async def test_a_down_store_fails_the_request_before_the_model_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    scripted = ScriptedPlugin()
    options = {"url": server.url, "prefix": unique_prefix(), "retry_window": 0.5}
    client = OblixClient(
        home=tmp_path / "home", session_store="redis", store_options=options, plugins=[scripted]
    )
    try:
        await client.hook_model("scripted", "m")
        session_id = await client.create_session(title="kept")
        server.kill()
        with caplog.at_level(logging.INFO):
            for session in (None, session_id):  # a new session and an existing one
                with pytest.raises(OblixError) as caught:
                    await client.execute("hello", session_id=session, stream=False)
                assert "redis" in str(caught.value).lower()
        assert not scripted.calls["m"], "the model ran although nothing could be stored"
        assert not [r for r in caplog.records if "model health" in r.getMessage()]
    finally:
        server.stop()
        await client.shutdown()
