"""Notices once per Oblix home: "no price for cloud model" is said when the model is hooked
(before any answer, so never on the answer's line), once per model and home, not on every run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from oblix import OblixClient
from oblix_core.config.notices import NOTICES_FILE, notice_once
from oblix_core.testing import ScriptedPlugin

NOTICE = "no price for cloud model scripted:my-own-cloud"


async def _hook_and_answer(home: Path) -> None:
    async with OblixClient(home=home, plugins=[ScriptedPlugin()]) as client:
        await client.hook_model("scripted", "my-own-cloud", local=False)
        await client.execute("hi", stream=False, store=False)


@pytest.mark.anyio
async def test_no_price_is_said_once_per_model_and_home(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    with caplog.at_level(logging.WARNING):
        await _hook_and_answer(first)
        assert caplog.text.count(NOTICE) == 1
        await _hook_and_answer(first)  # a later run on the same home: nothing more
        assert caplog.text.count(NOTICE) == 1
        await _hook_and_answer(second)  # another home says it once too
        assert caplog.text.count(NOTICE) == 2
    assert "no-price:scripted:my-own-cloud" in json.loads((first / NOTICES_FILE).read_text())


@pytest.mark.anyio
async def test_local_and_priced_models_say_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.toml").write_text(
        '[[models]]\ntype = "scripted"\nname = "priced"\nlocal = false\nprice_in = 1.0\nprice_out = 2.0\n'
    )
    with caplog.at_level(logging.DEBUG, logger="oblix"):
        async with OblixClient(home=tmp_path, plugins=[ScriptedPlugin()]) as client:
            await client.hook_model("scripted", "priced", local=False)
            await client.hook_model("scripted", "local-one")
    assert "no price" not in caplog.text and not (tmp_path / NOTICES_FILE).exists()


def test_a_read_only_home_says_it_once_per_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING):
            assert notice_once(home, "k", "said") is True
            assert notice_once(home, "k", "said") is False
        assert caplog.text.count("said") == 1
    finally:
        home.chmod(0o700)
