"""The pgvector document index: workspaces, documents and chunks in Postgres tables.

Keywords: a generated ``tsvector`` column (English stemming), ranked by BM25 among the
chunks where each query word occurs most (a ``postings`` table kept by a trigger: see
:mod:`oblix_pgvector.keywords`; the GIN index on ``tsv`` stays for older clients sharing
the tables). Vectors: a ``vector`` column (pgvector), searched by cosine
distance (``<=>``) within the workspace. A workspace may hold vectors of any dimension (one per
workspace); each dimension up to 2,000 gets a partial HNSW index (``vector_cosine_ops`` on
``embedding::vector(n)``, created with its first workspace or vectors), so a search is
approximate where Postgres chooses that index (large tables) and exact where it scans.
Filters (workspace, metadata) keep the scan going (``hnsw.iterative_scan = strict_order``,
pgvector 0.8+) until ``k`` rows pass them, nearest first.

Guarantees: a document's chunks change in one transaction, under a transaction-scoped
advisory lock on the document, so concurrent writers of one document from several
machines serialise and a client killed mid-write leaves the old document or the new one.
The DSN (and its password) is never logged or shown: ``repr`` redacts it.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from oblix.plugin import (
    Chunk,
    DocumentEntry,
    DocumentError,
    DocumentIndex,
    SearchHit,
    Workspace,
    redact_url,
    remember_secret,
)
from oblix_pgvector.keywords import TermStats, migrate, schema_complete, search_params, search_sql

_WORDS = re.compile(r"\w+", re.UNICODE)
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
#: pgvector's HNSW index takes ``vector`` columns of up to 2,000 dimensions.
HNSW_MAX_DIMENSIONS = 2000

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS {p}workspaces (id text PRIMARY KEY, body jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {p}documents (
    workspace_id text NOT NULL, id text NOT NULL, name text NOT NULL, body jsonb NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE TABLE IF NOT EXISTS {p}chunks (
    id bigserial PRIMARY KEY, workspace_id text NOT NULL, doc_id text NOT NULL, chunk_idx integer NOT NULL,
    text text NOT NULL, line_start integer, line_end integer, page integer, headings jsonb NOT NULL,
    heads text NOT NULL, embedding vector,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', heads || ' ' || text)) STORED
);
CREATE INDEX IF NOT EXISTS {p}chunks_doc ON {p}chunks (workspace_id, doc_id);
CREATE INDEX IF NOT EXISTS {p}chunks_tsv ON {p}chunks USING gin (tsv);
"""


def ts_query(query: str) -> str:
    """Any of the query's words (only word characters reach ``to_tsquery``: no syntax injected)."""
    words = dict.fromkeys(w.lower() for w in _WORDS.findall(query) if w.strip("_"))
    return " | ".join(words)


def _vector(values: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


class PgVectorDocumentIndex(DocumentIndex):
    """See the module docstring. ``prefix`` names the tables (``oblix_`` by default)."""

    name = "pgvector"

    def __init__(self, dsn: str, *, prefix: str = "oblix_", timeout: float = 30.0) -> None:
        import psycopg

        if not _PREFIX.match(prefix):
            raise DocumentError(f"Invalid table prefix {prefix!r}: lower-case letters, digits and _ only.")
        self._dsn_shown = redact_url(dsn)
        remember_secret(dsn)
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout)))
        except psycopg.Error as exc:
            raise DocumentError(
                f"Cannot connect to Postgres at {self._dsn_shown}: {type(exc).__name__}."
            ) from None
        self._p = prefix
        self._lock = threading.RLock()
        self._hnsw: set[int] = set()
        self._terms = TermStats()
        with self._lock:
            if not schema_complete(self._db, prefix):  # DDL waits for writers in flight: only if needed
                with self._db.transaction():
                    self._db.execute("SELECT pg_advisory_xact_lock(hashtext('oblix-pgvector-schema'))")
                    for statement in SCHEMA.format(p=prefix).split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    migrate(self._db, prefix)
        with self._lock:
            # pgvector 0.8+: a filtered HNSW scan goes on until LIMIT rows pass the filter
            with contextlib.suppress(psycopg.Error):
                self._db.execute("SET hnsw.iterative_scan = strict_order")
            dims = self._db.execute(
                self._q("SELECT DISTINCT (body->>'dimension')::int FROM {p}workspaces")
            ).fetchall()
        for (dim,) in dims:
            self._ensure_hnsw(dim)

    def _ensure_hnsw(self, dimension: int | None) -> None:
        """The partial HNSW index for vectors of ``dimension`` (once per dimension and process;
        outside any document's transaction, so it never waits inside one)."""
        if not dimension or not 0 < int(dimension) <= HNSW_MAX_DIMENSIONS or dimension in self._hnsw:
            return
        n = int(dimension)
        with self._lock:
            found = self._db.execute("SELECT to_regclass(%s)", (f"{self._p}chunks_hnsw_{n}",)).fetchone()
            if found and found[0] is not None:  # CREATE INDEX IF NOT EXISTS would wait for writers in flight
                self._hnsw.add(n)
                return
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext('oblix-pgvector-schema'))")
            self._db.execute(
                self._q(
                    f"CREATE INDEX IF NOT EXISTS {{p}}chunks_hnsw_{n} ON {{p}}chunks USING hnsw "
                    f"((embedding::vector({n})) vector_cosine_ops) WHERE vector_dims(embedding) = {n}"
                )
            )
        self._hnsw.add(n)

    def _q(self, sql: str) -> Any:
        """``sql`` with the table prefix (checked at start: letters, digits and _ only)."""
        return sql.format(p=self._p)

    def _rows(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, prepare: bool | None = None
    ) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(self._q(sql), params, prepare=prepare).fetchall()

    # -- workspaces ------------------------------------------------------------------------

    def put_workspace(self, workspace: Workspace) -> None:
        self._ensure_hnsw(workspace.dimension)
        self._rows(
            "INSERT INTO {p}workspaces (id, body) VALUES (%s, %s) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body RETURNING id",
            (workspace.id, json.dumps(workspace.to_dict())),
        )

    def get_workspace(self, workspace_id: str) -> Workspace | None:
        rows = self._rows("SELECT body FROM {p}workspaces WHERE id = %s", (workspace_id,))
        return Workspace.from_dict(rows[0][0]) if rows else None

    def list_workspaces(self) -> list[Workspace]:
        rows = self._rows("SELECT body FROM {p}workspaces ORDER BY body->>'created_at', id")
        return [Workspace.from_dict(body) for (body,) in rows]

    def delete_workspace(self, workspace_id: str) -> bool:
        with self._lock, self._db.transaction():
            self._terms.forget(workspace_id)
            for table in ("chunks", "documents"):
                self._db.execute(
                    self._q("DELETE FROM {p}" + table + " WHERE workspace_id = %s"), (workspace_id,)
                )
            gone = self._db.execute(
                self._q("DELETE FROM {p}workspaces WHERE id = %s"), (workspace_id,)
            ).rowcount
        return gone > 0

    # -- documents -------------------------------------------------------------------------

    def put_document(
        self, document: DocumentEntry, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]] | None
    ) -> None:
        if vectors is not None and len(vectors) != len(chunks):
            raise DocumentError(f"{len(chunks)} chunks but {len(vectors)} vectors for {document.name}.")
        if any(c.doc_id != document.id for c in chunks):
            raise DocumentError(f"A chunk of another document was given with {document.name}.")
        ws = document.workspace_id
        body = json.dumps(document.to_dict() | {"chunk_count": len(chunks)})
        if vectors:
            self._ensure_hnsw(len(vectors[0]))
        rows = [
            (
                ws,
                document.id,
                c.chunk_idx,
                c.text,
                c.line_start,
                c.line_end,
                c.page,
                json.dumps(list(c.headings)),
                " ".join((document.name, *c.headings)),
                _vector(vectors[i]) if vectors is not None else None,
            )
            for i, c in enumerate(chunks)
        ]
        with self._lock, self._db.transaction():
            self._terms.forget(ws)
            if not self._db.execute(self._q("SELECT 1 FROM {p}workspaces WHERE id = %s"), (ws,)).fetchone():
                raise DocumentError(f"No workspace {ws!r} in the index; create it first.")
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"oblix-doc/{ws}/{document.id}",))
            self._db.execute(
                self._q("DELETE FROM {p}chunks WHERE workspace_id = %s AND doc_id = %s"), (ws, document.id)
            )
            self._db.execute(
                self._q(
                    "INSERT INTO {p}documents (workspace_id, id, name, body) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (workspace_id, id) DO UPDATE SET name = excluded.name, body = excluded.body"
                ),
                (ws, document.id, document.name, body),
            )
            with self._db.cursor() as cur:
                cur.executemany(
                    self._q(
                        "INSERT INTO {p}chunks (workspace_id, doc_id, chunk_idx, text, line_start, line_end, "
                        "page, headings, heads, embedding) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector)"
                    ),
                    rows,
                )

    def get_document(self, workspace_id: str, doc_id: str) -> DocumentEntry | None:
        rows = self._rows(
            "SELECT body FROM {p}documents WHERE workspace_id = %s AND id = %s", (workspace_id, doc_id)
        )
        return DocumentEntry(**rows[0][0]) if rows else None

    def list_documents(self, workspace_id: str, where: dict[str, Any] | None = None) -> list[DocumentEntry]:
        rows = self._rows(
            "SELECT body FROM {p}documents WHERE workspace_id = %s AND body->'metadata' @> %s::jsonb "
            "ORDER BY name, id",
            (workspace_id, json.dumps(where or {})),
        )
        return [DocumentEntry(**body) for (body,) in rows]

    def document_chunks(self, workspace_id: str, doc_id: str) -> list[Chunk]:
        rows = self._rows(
            "SELECT doc_id, chunk_idx, text, line_start, line_end, page, headings FROM {p}chunks "
            "WHERE workspace_id = %s AND doc_id = %s ORDER BY chunk_idx",
            (workspace_id, doc_id),
        )
        return [_chunk(row) for row in rows]

    def delete_document(self, workspace_id: str, doc_id: str) -> bool:
        with self._lock, self._db.transaction():
            self._terms.forget(workspace_id)
            self._db.execute(
                self._q("DELETE FROM {p}chunks WHERE workspace_id = %s AND doc_id = %s"),
                (workspace_id, doc_id),
            )
            gone = self._db.execute(
                self._q("DELETE FROM {p}documents WHERE workspace_id = %s AND id = %s"),
                (workspace_id, doc_id),
            ).rowcount
        return gone > 0

    def stats(self, workspace_id: str) -> dict[str, int]:
        (row,) = self._rows(
            "SELECT count(*), coalesce(sum((body->>'size')::bigint), 0), "
            "coalesce(sum((body->>'chunk_count')::bigint), 0) FROM {p}documents WHERE workspace_id = %s",
            (workspace_id,),
        )
        return {"documents": int(row[0]), "chunks": int(row[2]), "bytes": int(row[1])}

    # -- search ----------------------------------------------------------------------------

    _HIT = (
        "SELECT c.doc_id, c.chunk_idx, c.text, c.line_start, c.line_end, c.page, c.headings, {score}, d.name "
        "FROM {p}chunks c JOIN {p}documents d ON d.workspace_id = c.workspace_id AND d.id = c.doc_id "
        "WHERE c.workspace_id = %s AND d.body->'metadata' @> %s::jsonb AND {match} ORDER BY {order} LIMIT %s"
    )

    def keyword_search(
        self, workspace_id: str, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        words = ts_query(query)
        if not words:
            return []
        with self._lock:
            terms = self._terms.weights(self._db, self._p, workspace_id, words.replace(" | ", " "))
        if not terms:
            return []
        params = search_params(terms, k) | {"ws": workspace_id, "where": json.dumps(where or {})}
        # never prepared: Postgres's generic plan for it (chosen after a few runs of a prepared
        # statement) reads every chunk of the workspace; planned for its values it reads candidates
        rows = self._rows(search_sql(bool(where)), params, prepare=False)
        return [SearchHit(_chunk(r[:7]), float(r[7]), r[8], {"workspace_id": workspace_id}) for r in rows]

    def vector_search(
        self, workspace_id: str, vector: Sequence[float], k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        literal, n = _vector(vector), len(vector)
        # the dimension inlined (an int), so the planner can match the partial HNSW index
        sql = self._HIT.format(
            p="{p}",
            score="1 - (c.embedding <=> %s::vector)",
            match=f"c.embedding IS NOT NULL AND vector_dims(c.embedding) = {n}",
            order=f"c.embedding::vector({n}) <=> %s::vector({n})" if n else "c.embedding <=> %s::vector",
        )
        rows = self._rows(sql, (literal, workspace_id, json.dumps(where or {}), literal, k))
        return [SearchHit(_chunk(r[:7]), float(r[7]), r[8], {"workspace_id": workspace_id}) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"<PgVectorDocumentIndex {self._dsn_shown} prefix={self._p}>"


def _chunk(row: Sequence[Any]) -> Chunk:
    doc_id, idx, text, line_start, line_end, page, heads = row
    return Chunk(doc_id, int(idx), text, int(line_start or 1), int(line_end or 1), page, tuple(heads))
