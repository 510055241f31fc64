"""The embedded document index: one SQLite file in the Oblix home (``sqlite``).

Keywords: each chunk's terms counted by FTS5's tokenizer (Porter stemming) when it is
written, and BM25 scored with numpy over an inverted index built from them
(:mod:`oblix_docs.keywords`). Vectors: float32 blobs in the chunks table, searched with
numpy. Both are cached in memory per workspace and rebuilt when the workspace's version
changes, in this process or another, so the index works on every Python whose sqlite3 has
FTS5 -- no extension is loaded. A file written before the term counts existed (with an FTS5
table ``chunks_fts``) has its chunks counted and that table dropped when it is first opened.

Guarantees: a document's chunks change in one transaction (``BEGIN IMMEDIATE``), so a
process killed mid-ingest leaves the old document or the new one, never a mix or an
orphan chunk; WAL mode lets searches run while another process writes; several
processes may share the file (writers wait up to ``timeout`` seconds for each other).
The file and its folder are private to the user (0600/0700).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oblix.plugin import (
    Chunk,
    DocumentEntry,
    DocumentError,
    DocumentIndex,
    SearchHit,
    Workspace,
    matches_metadata,
    oblix_home,
)
from oblix_docs.keywords import SCHEMA as KEYWORD_SCHEMA
from oblix_docs.keywords import (
    STOPWORDS,
    Postings,
    Tokenizer,
    best,
    load_postings,
    query_words,
    term_ids,
    write_chunk_terms,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY, body TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    workspace_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY, workspace_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    chunk_idx INTEGER NOT NULL, text TEXT NOT NULL, line_start INTEGER, line_end INTEGER, page INTEGER,
    headings TEXT NOT NULL, vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (workspace_id, doc_id);
"""
__all__ = ["STOPWORDS", "SqliteDocumentIndex", "query_words"]


class SqliteDocumentIndex(DocumentIndex):
    """Workspaces, documents, chunks and vectors in one SQLite file (see the module docstring)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else oblix_home() / "documents" / "index.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._vectors: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self._postings: dict[str, tuple[int, Postings]] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA + KEYWORD_SCHEMA)
            self._tokenizer = Tokenizer(self._db)
        self._migrate()

    def _migrate(self) -> None:
        """Count the words of the chunks a previous version wrote (its FTS5 table is then dropped),
        in one transaction: a process killed meanwhile leaves the file as it was."""

        def old_table() -> bool:
            return bool(self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_fts'").fetchone())

        def migrate() -> None:
            if not old_table():  # another process migrated it meanwhile
                return
            cursor = self._db.execute(
                "SELECT c.rowid, c.workspace_id, c.text, c.headings, coalesce(d.name, '') FROM chunks c "
                "LEFT JOIN documents d ON d.workspace_id = c.workspace_id AND d.id = c.doc_id "
                "WHERE c.rowid NOT IN (SELECT chunk FROM chunk_terms) ORDER BY c.workspace_id, c.rowid"
            )
            while batch := cursor.fetchmany(500):
                for ws in dict.fromkeys(row[1] for row in batch):
                    rows = [(r[0], r[2], _heads(r[4], json.loads(r[3]))) for r in batch if r[1] == ws]
                    write_chunk_terms(self._db, self._tokenizer, ws, rows)
            self._db.execute("DROP TABLE chunks_fts")
            self._db.execute("UPDATE workspaces SET version = version + 1")

        with self._lock:
            if not old_table():
                return
        self._write(migrate)

    # -- transactions ----------------------------------------------------------------------

    def _write(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _bump(self, workspace_id: str) -> None:
        self._db.execute("UPDATE workspaces SET version = version + 1 WHERE id = ?", (workspace_id,))

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- workspaces ------------------------------------------------------------------------

    def put_workspace(self, workspace: Workspace) -> None:
        body = json.dumps(workspace.to_dict())
        self._write(
            lambda: self._db.execute(
                "INSERT INTO workspaces (id, body) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                (workspace.id, body),
            )
        )

    def get_workspace(self, workspace_id: str) -> Workspace | None:
        rows = self._rows("SELECT body FROM workspaces WHERE id = ?", (workspace_id,))
        return Workspace.from_dict(json.loads(rows[0][0])) if rows else None

    def list_workspaces(self) -> list[Workspace]:
        found = [Workspace.from_dict(json.loads(b)) for (b,) in self._rows("SELECT body FROM workspaces")]
        return sorted(found, key=lambda w: (w.created_at, w.id))

    def delete_workspace(self, workspace_id: str) -> bool:
        def delete() -> bool:
            self._db.execute("DELETE FROM chunk_terms WHERE workspace_id = ?", (workspace_id,))
            self._db.execute("DELETE FROM chunks WHERE workspace_id = ?", (workspace_id,))
            self._db.execute("DELETE FROM documents WHERE workspace_id = ?", (workspace_id,))
            return self._db.execute("DELETE FROM workspaces WHERE id = ?", (workspace_id,)).rowcount > 0

        self._vectors.pop(workspace_id, None)
        self._postings.pop(workspace_id, None)
        return bool(self._write(delete))

    # -- documents -------------------------------------------------------------------------

    def _delete_chunks(self, workspace_id: str, doc_id: str) -> None:
        self._db.execute(
            "DELETE FROM chunk_terms WHERE chunk IN "
            "(SELECT rowid FROM chunks WHERE workspace_id = ? AND doc_id = ?)",
            (workspace_id, doc_id),
        )
        self._db.execute("DELETE FROM chunks WHERE workspace_id = ? AND doc_id = ?", (workspace_id, doc_id))

    def put_document(
        self, document: DocumentEntry, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]] | None
    ) -> None:
        if vectors is not None and len(vectors) != len(chunks):
            raise DocumentError(f"{len(chunks)} chunks but {len(vectors)} vectors for {document.name}.")
        if any(c.doc_id != document.id for c in chunks):
            raise DocumentError(f"A chunk of another document was given with {document.name}.")
        blobs = _blobs(vectors, len(chunks))
        ws = document.workspace_id
        entry = json.dumps(document.to_dict() | {"chunk_count": len(chunks)})

        def put() -> None:
            if not self._db.execute("SELECT 1 FROM workspaces WHERE id = ?", (ws,)).fetchone():
                raise DocumentError(f"No workspace {ws!r} in the index; create it first.")
            self._delete_chunks(ws, document.id)
            self._db.execute(
                "INSERT OR REPLACE INTO documents (workspace_id, id, name, body) VALUES (?, ?, ?, ?)",
                (ws, document.id, document.name, entry),
            )
            words = []
            for chunk, blob in zip(chunks, blobs, strict=True):
                heads = json.dumps(list(chunk.headings))
                cur = self._db.execute(
                    "INSERT INTO chunks (workspace_id, doc_id, chunk_idx, text, line_start, line_end, page, "
                    "headings, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ws,
                        document.id,
                        chunk.chunk_idx,
                        chunk.text,
                        chunk.line_start,
                        chunk.line_end,
                        chunk.page,
                        heads,
                        blob,
                    ),
                )
                words.append((int(cur.lastrowid or 0), chunk.text, _heads(document.name, chunk.headings)))
            write_chunk_terms(self._db, self._tokenizer, ws, words)
            self._bump(ws)

        self._write(put)

    def get_document(self, workspace_id: str, doc_id: str) -> DocumentEntry | None:
        rows = self._rows(
            "SELECT body FROM documents WHERE workspace_id = ? AND id = ?", (workspace_id, doc_id)
        )
        return _entry(rows[0][0]) if rows else None

    def list_documents(self, workspace_id: str, where: dict[str, Any] | None = None) -> list[DocumentEntry]:
        rows = self._rows(
            "SELECT body FROM documents WHERE workspace_id = ? ORDER BY name, id", (workspace_id,)
        )
        docs = [_entry(body) for (body,) in rows]
        return [d for d in docs if matches_metadata(d.metadata, where)]

    def document_chunks(self, workspace_id: str, doc_id: str) -> list[Chunk]:
        rows = self._rows(
            "SELECT doc_id, chunk_idx, text, line_start, line_end, page, headings FROM chunks "
            "WHERE workspace_id = ? AND doc_id = ? ORDER BY chunk_idx",
            (workspace_id, doc_id),
        )
        return [_chunk(row) for row in rows]

    def delete_document(self, workspace_id: str, doc_id: str) -> bool:
        def delete() -> bool:
            self._delete_chunks(workspace_id, doc_id)
            gone = self._db.execute(
                "DELETE FROM documents WHERE workspace_id = ? AND id = ?", (workspace_id, doc_id)
            ).rowcount
            self._bump(workspace_id)
            return gone > 0

        return bool(self._write(delete))

    def stats(self, workspace_id: str) -> dict[str, int]:
        (chunks,) = self._rows("SELECT count(*) FROM chunks WHERE workspace_id = ?", (workspace_id,))[0]
        docs = self.list_documents(workspace_id)
        return {"documents": len(docs), "chunks": int(chunks), "bytes": sum(d.size for d in docs)}

    # -- search ----------------------------------------------------------------------------

    def _allowed(self, workspace_id: str, where: dict[str, Any] | None) -> set[str] | None:
        return None if not where else {d.id for d in self.list_documents(workspace_id, where)}

    def keyword_search(
        self, workspace_id: str, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        with self._lock:
            terms = self._tokenizer.query_terms(query)
            if not terms:
                return []
            ids = term_ids(self._db, set(terms), create=False)
        postings = self._keyword_postings(workspace_id)
        scores = postings.score([ids.get(term) for term in terms])
        allowed = self._allowed(workspace_id, where)
        top = best(scores, None if allowed is not None else k)
        ranked = [(int(postings.rowids[i]), float(scores[i])) for i in top]
        return self._hits(workspace_id, ranked, k, allowed)

    def _version(self, workspace_id: str) -> int:
        rows = self._rows("SELECT version FROM workspaces WHERE id = ?", (workspace_id,))
        return int(rows[0][0]) if rows else -1

    def _keyword_postings(self, workspace_id: str) -> Postings:
        version = self._version(workspace_id)
        cached = self._postings.get(workspace_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            postings = load_postings(self._db, workspace_id)
        self._postings[workspace_id] = (version, postings)
        return postings

    def _matrix(self, workspace_id: str) -> tuple[np.ndarray, np.ndarray]:
        version = self._version(workspace_id)
        cached = self._vectors.get(workspace_id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        data = self._rows(
            "SELECT rowid, vector FROM chunks WHERE workspace_id = ? AND vector IS NOT NULL ORDER BY rowid",
            (workspace_id,),
        )
        ids = np.fromiter((r[0] for r in data), dtype=np.int64, count=len(data))
        matrix = (
            np.frombuffer(b"".join(r[1] for r in data), dtype=np.float32).reshape(len(data), -1)
            if data
            else np.zeros((0, 0), dtype=np.float32)
        )
        self._vectors[workspace_id] = (version, ids, matrix)
        return ids, matrix

    def vector_search(
        self, workspace_id: str, vector: Sequence[float], k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        ids, matrix = self._matrix(workspace_id)
        if not len(ids):
            return []
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (matrix.shape[1],):
            raise DocumentError(
                f"A query vector of {query.shape[0]} dimensions for a workspace of {matrix.shape[1]}: "
                "search with the workspace's own embedder."
            )
        query = query / (np.linalg.norm(query) or 1.0)
        # einsum: numpy's own single-threaded SIMD loop; BLAS's gemv (matrix @ query) ran at twice
        # the time on a loaded 2-core machine, its threads waiting for each other
        scores = np.einsum("ij,j->i", matrix, query)
        allowed = self._allowed(workspace_id, where)
        want = len(ids) if allowed is not None else min(k, len(ids))
        top = np.argpartition(-scores, want - 1)[:want] if want < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._hits(workspace_id, [(int(ids[i]), float(scores[i])) for i in top], k, allowed)

    def _hits(
        self, workspace_id: str, ranked: list[tuple[int, float]], k: int, allowed: set[str] | None
    ) -> list[SearchHit]:
        hits: list[SearchHit] = []
        for start in range(0, len(ranked), 500):
            part = ranked[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._rows(
                "SELECT c.rowid, c.doc_id, c.chunk_idx, c.text, c.line_start, c.line_end, c.page, "
                "c.headings, d.name "
                "FROM chunks c JOIN documents d ON d.workspace_id = c.workspace_id AND d.id = c.doc_id "
                f"WHERE c.rowid IN ({marks})",
                [rowid for rowid, _ in part],
            )
            by_id = {row[0]: row for row in rows}
            for rowid, score in part:
                row = by_id.get(rowid)
                if row is not None and (allowed is None or row[1] in allowed):
                    hits.append(SearchHit(_chunk(row[1:8]), score, row[8], {"workspace_id": workspace_id}))
                    if len(hits) == k:
                        return hits
        return hits

    def cache_bytes(self, workspace_id: str) -> dict[str, int]:
        """Memory held for the workspace's searches: ``keywords`` (postings) and ``vectors`` (matrix)."""
        postings, vectors = self._postings.get(workspace_id), self._vectors.get(workspace_id)
        return {
            "keywords": postings[1].nbytes if postings else 0,
            "vectors": vectors[1].nbytes + vectors[2].nbytes if vectors else 0,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._vectors.clear()
            self._postings.clear()

    def __repr__(self) -> str:
        return f"<SqliteDocumentIndex {self.path}>"


def _blobs(vectors: Sequence[Sequence[float]] | None, count: int) -> list[bytes | None]:
    if vectors is None or (count == 0 and len(vectors) == 0):  # a document without text has no chunk
        return [None] * count
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        raise DocumentError("Vectors must be rows of finite numbers of one length.")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return [row.tobytes() for row in (matrix / norms).astype(np.float32)]


def _heads(name: str, headings: Sequence[str]) -> str:
    """What a chunk is found by besides its text: its document's name and heading path."""
    return " ".join((name, *headings))


def _entry(body: str) -> DocumentEntry:
    return DocumentEntry(**json.loads(body))


def _chunk(row: Sequence[Any]) -> Chunk:
    doc_id, idx, text, line_start, line_end, page, heads = row
    return Chunk(
        doc_id, int(idx), text, int(line_start or 1), int(line_end or 1), page, tuple(json.loads(heads))
    )
