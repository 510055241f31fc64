"""The file store's usage ledger: ``<root>/.usage.sqlite3``, beside the sessions.

A sibling database, not the listing index: the index is a cache rebuilt from the session
files, while the ledger is the only record of what was spent. Every process and thread
using the same root shares it (SQLite WAL, its own locking); see
:class:`oblix.plugin.SqliteUsageLedger` for what it stores and how it is queried. Each
batch of records is one transaction (all or nothing); a damaged file is an error naming it,
and ``oblix usage --repair`` moves it aside and starts afresh with what it still holds.
"""

from __future__ import annotations

from pathlib import Path

from oblix.plugin import SqliteUsageLedger

#: The ledger's file name in the store root (a dot name: never a session id).
LEDGER = ".usage.sqlite3"


def file_ledger(root: Path) -> SqliteUsageLedger:
    """The usage ledger of the file store rooted at ``root``."""
    return SqliteUsageLedger(Path(root) / LEDGER)
