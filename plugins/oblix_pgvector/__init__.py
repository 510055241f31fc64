"""Postgres with pgvector as the document index (extra ``oblix[pgvector]``), registered as ``pgvector``.

For users who outgrow one machine: many clients and servers share one index.
``[documents] index = "pgvector"`` in config.toml selects it for every path (the DSN from
``$OBLIX_PGVECTOR_DSN`` or the variable ``dsn_env`` names), and
``client.use_document_index("pgvector", dsn="postgresql://...")`` for one client. Without
psycopg the plugin is skipped and ``oblix plugins`` says what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs("psycopg", install="pip install 'oblix[pgvector]'")

__all__ = ["make_pgvector_index"]


def make_pgvector_index(**options: Any) -> Any:
    """A :class:`~oblix_pgvector.index.PgVectorDocumentIndex` (options: ``dsn``, ``prefix``, ``timeout``)."""
    from oblix_pgvector.index import PgVectorDocumentIndex

    return PgVectorDocumentIndex(**options)


@hookimpl
def oblix_register_document_indexes(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("pgvector", make_pgvector_index)
