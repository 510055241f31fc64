"""The usage ledger on a real full disk (a 2 MiB tmpfs): budgets hold while SQLite refuses
writes, and the refused records are written once the disk has room again."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest

from oblix_core.client import OblixClient
from oblix_core.request.budgets import BudgetExceededError, BudgetSettings
from oblix_core.testing import ScriptedPlugin
from oblix_core.usage import writer
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_file.store import FileSessionStore
from tests.conftest import FAST

CLOUD = "scripted:gpt-4o-mini"


class LedgerElsewhere(FileSessionStore):
    """The file store with its usage ledger on another file system (``ledger``)."""

    def __init__(self, root: Path, ledger: Path) -> None:
        super().__init__(root)
        self.ledger_path = ledger

    def usage_ledger(self) -> SqliteUsageLedger:
        return SqliteUsageLedger(self.ledger_path)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` until the file system refuses even one more byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.anyio
async def test_a_budget_holds_while_the_ledger_disk_is_full_and_the_records_land_after(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the record SQLite refused ("database or disk is full") was logged and dropped:
    the daily budget never closed however many cloud answers were given."""
    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.1)
    ledger_path = small_disk / "usage.sqlite3"
    store = LedgerElsewhere(tmp_path / "sessions", ledger_path)
    home, plugins = tmp_path / "home", [ScriptedPlugin()]
    async with OblixClient(home=home, session_store=store, plugins=plugins, execution=FAST) as client:
        await client.hook_model("scripted", "gpt-4o-mini", local=False)
        first = await client.execute("the first question", stream=False, store=False)
        cost = first["metrics"]["cost_usd"]
        assert cost > 0 and client.usage_ledger.spent() == pytest.approx(cost)  # written, on the disk
        client.engine.budgets = BudgetSettings(daily_usd=1.5 * cost)
        filler = _fill(small_disk)
        with caplog.at_level(logging.WARNING, logger="oblix_core.usage.writer"):
            second = await client.execute("the second question", stream=False, store=False)
            both = cost + second["metrics"]["cost_usd"]
            assert client.usage_ledger.spent() == pytest.approx(both)  # one on the disk, one refused
        assert "not recorded yet" in caplog.text and "full" in caplog.text
        assert SqliteUsageLedger(ledger_path).spent() == pytest.approx(cost)  # the disk has one
        with pytest.raises(BudgetExceededError, match="daily budget"):
            await client.execute("a third question", stream=False, store=False)
        filler.unlink()  # room again: the refused record is written on the writer's next try
        deadline = time.monotonic() + 30
        while SqliteUsageLedger(ledger_path).spent() < both * 0.999:
            assert time.monotonic() < deadline, "the refused record was never written"
            time.sleep(0.05)
        recorded = {r.request_id for r in SqliteUsageLedger(ledger_path).recent(10)}
        assert {first["request_id"], second["request_id"]} <= recorded
        assert client.usage_ledger.spent() == pytest.approx(both)  # counted once
