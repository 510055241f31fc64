"""The SQLite index's search paths: keyword search with and without other workspaces' chunks in
the file (the workspace test is skipped when no other workspace has chunks), and the vector
scores against a plain numpy reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("oblix_docs")

from oblix_core.documents.records import Chunk, DocumentEntry, Workspace
from oblix_docs.sqlite_index import SqliteDocumentIndex

TEXTS = [
    "the red router blinks twice when the firmware updates",
    "a router resets when its red button is held",
    "cake recipes need butter and sugar",
    "routers route packets between networks",
]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteDocumentIndex]:
    idx = SqliteDocumentIndex(tmp_path / "index.sqlite3")
    yield idx
    idx.close()


def _fill(index: SqliteDocumentIndex, ws: str, texts: list[str], vectors: np.ndarray) -> None:
    index.put_workspace(Workspace(id=ws, name=ws, embedder="test", dimension=vectors.shape[1]))
    for i, text in enumerate(texts):
        doc = DocumentEntry(id=f"{ws}-d{i}", workspace_id=ws, name=f"{ws}-{i}.txt", embedder="test")
        index.put_document(doc, [Chunk(doc.id, 0, text)], vectors[i : i + 1].tolist())


def _keyword(index: SqliteDocumentIndex, ws: str, query: str) -> list[tuple[str, float]]:
    return [(h.chunk.doc_id, round(h.score, 9)) for h in index.keyword_search(ws, query, 10)]


def test_keyword_search_is_the_same_alone_and_beside_another_workspace(index: SqliteDocumentIndex) -> None:
    vectors = np.eye(4, dtype=np.float32)
    _fill(index, "a", TEXTS, vectors)
    alone = _keyword(index, "a", "red router button")
    assert [doc for doc, _ in alone][:2] == ["a-d1", "a-d0"] and all(s > 0 for _, s in alone)
    _fill(index, "b", TEXTS, vectors)
    beside = _keyword(index, "a", "red router button")
    assert [doc for doc, _ in beside] == [doc for doc, _ in alone]
    assert {doc for doc, _ in _keyword(index, "b", "red router button")} == {"b-d0", "b-d1", "b-d3"}
    index.delete_workspace("b")
    assert _keyword(index, "a", "red router button") == alone


def test_keyword_search_of_a_workspace_without_chunks_beside_one_with_them(
    index: SqliteDocumentIndex,
) -> None:
    _fill(index, "a", TEXTS, np.eye(4, dtype=np.float32))
    index.put_workspace(Workspace(id="empty", name="empty", embedder="test", dimension=4))
    assert index.keyword_search("empty", "router", 5) == []
    assert index.keyword_search("zzz-missing", "router", 5) == []


def test_vector_scores_are_cosine_similarities_nearest_first(index: SqliteDocumentIndex) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((len(TEXTS), 8)).astype(np.float32)
    _fill(index, "a", TEXTS, vectors)
    query = rng.standard_normal(8).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit @ (query / np.linalg.norm(query))
    hits = index.vector_search("a", query.tolist(), 4)
    assert [h.chunk.doc_id for h in hits] == [f"a-d{i}" for i in np.argsort(-expected)]
    assert [h.score for h in hits] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
