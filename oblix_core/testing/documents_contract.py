"""The contracts every embedder, document index and document reader must satisfy.

Subclass one and provide its fixture (``embedder``, ``index``, or ``reader`` plus
``sample``); the suite calls the part's blocking methods directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from oblix_core.documents.errors import DocumentError, UnreadableDocumentError
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder
from oblix_core.documents.records import Chunk, DocumentEntry, TextBlock, Workspace


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


class EmbedderContract:
    """Provide an ``embedder`` fixture (a real model: the suite checks that meaning is kept)."""

    @pytest.fixture
    def embedder(self) -> Embedder:  # pragma: no cover - always overridden
        raise NotImplementedError("provide an `embedder` fixture")

    def test_has_a_name_and_a_dimension(self, embedder: Embedder) -> None:
        assert isinstance(embedder.name, str) and embedder.name
        assert isinstance(embedder.dimension, int) and embedder.dimension > 0
        assert isinstance(embedder.is_local, bool)

    def test_one_finite_vector_per_text_in_order(self, embedder: Embedder) -> None:
        texts = ["The cat sat on the mat.", "Quarterly revenue rose by four percent.", "x"]
        vectors = [list(v) for v in embedder.embed(texts)]
        assert len(vectors) == 3
        assert all(len(v) == embedder.dimension and all(math.isfinite(x) for x in v) for v in vectors)
        alone = list(embedder.embed([texts[1]])[0])
        assert _cosine(alone, vectors[1]) > 0.99
        assert list(embedder.embed([])) == []

    def test_similar_meaning_is_nearer_than_unrelated(self, embedder: Embedder) -> None:
        query, near, far = embedder.embed(
            [
                "How do I restart my wireless router?",
                "Rebooting the Wi-Fi router: unplug it for ten seconds.",
                "The recipe needs two cups of flour and an egg.",
            ]
        )
        assert _cosine(list(query), list(near)) > _cosine(list(query), list(far))

    def test_queries_embed_to_the_same_dimension(self, embedder: Embedder) -> None:
        (vector,) = embedder.embed(["what is the warranty period"], query=True)
        assert len(vector) == embedder.dimension


def _workspace(wid: str = "ws_contract", dimension: int = 4) -> Workspace:
    return Workspace(
        id=wid,
        name=wid,
        embedder="test:unit-vectors",
        dimension=dimension,
        created_at="2026-01-01T00:00:00.000Z",
    )


def _doc(doc_id: str, name: str, wid: str = "ws_contract", **metadata: object) -> DocumentEntry:
    return DocumentEntry(
        id=doc_id,
        workspace_id=wid,
        name=name,
        path=name,
        content_hash=f"h-{doc_id}",
        embedder="test:unit-vectors",
        size=10,
        metadata=dict(metadata),
    )


def _chunks(doc_id: str, *texts: str) -> list[Chunk]:
    return [Chunk(doc_id, i, t, i + 1, i + 1, None, ("Section",)) for i, t in enumerate(texts)]


class DocumentIndexContract:
    """Provide an ``index`` fixture: a fresh, empty index (any dimension must work)."""

    @pytest.fixture
    def index(self) -> DocumentIndex:  # pragma: no cover - always overridden
        raise NotImplementedError("provide an `index` fixture")

    @pytest.fixture
    def filled(self, index: DocumentIndex) -> DocumentIndex:
        index.put_workspace(_workspace())
        index.put_document(
            _doc("d1", "router.md", team="net"),
            _chunks("d1", "reset the router with the red button", "wifi password on the sticker"),
            [[1, 0, 0, 0], [0, 1, 0, 0]],
        )
        index.put_document(
            _doc("d2", "cake.md", team="kitchen"),
            _chunks("d2", "bake the cake for forty minutes"),
            [[0, 0, 1, 0]],
        )
        return index

    def test_workspaces_are_kept_listed_and_deleted(self, index: DocumentIndex) -> None:
        index.put_workspace(_workspace("ws_a"))
        index.put_workspace(_workspace("ws_b"))
        assert index.get_workspace("ws_a") == _workspace("ws_a")
        assert [w.id for w in index.list_workspaces()] == ["ws_a", "ws_b"]
        assert index.delete_workspace("ws_a") is True
        assert index.get_workspace("ws_a") is None and index.delete_workspace("ws_a") is False

    def test_a_document_and_its_chunks_are_listed(self, filled: DocumentIndex) -> None:
        docs = filled.list_documents("ws_contract")
        assert [d.name for d in docs] == ["cake.md", "router.md"]
        assert filled.get_document("ws_contract", "d1").chunk_count == 2  # type: ignore[union-attr]
        chunks = filled.document_chunks("ws_contract", "d1")
        assert [c.text for c in chunks] == [
            "reset the router with the red button",
            "wifi password on the sticker",
        ]
        assert chunks[0].headings == ("Section",) and chunks[1].line_start == 2
        assert filled.stats("ws_contract")["chunks"] == 3

    def test_replacing_a_document_replaces_every_chunk(self, filled: DocumentIndex) -> None:
        filled.put_document(_doc("d1", "router.md"), _chunks("d1", "firmware update steps"), [[0, 0, 0, 1]])
        assert [c.text for c in filled.document_chunks("ws_contract", "d1")] == ["firmware update steps"]
        assert filled.keyword_search("ws_contract", "sticker", 5) == []
        assert [h.chunk.text for h in filled.vector_search("ws_contract", [0, 1, 0, 0], 5)].count(
            "wifi password on the sticker"
        ) == 0

    def test_a_failed_put_leaves_the_old_document(self, filled: DocumentIndex) -> None:
        with pytest.raises(DocumentError):
            filled.put_document(_doc("d1", "router.md"), _chunks("d1", "a", "b"), [[1, 0, 0, 0]])
        assert len(filled.document_chunks("ws_contract", "d1")) == 2

    def test_a_document_needs_its_workspace(self, index: DocumentIndex) -> None:
        with pytest.raises(DocumentError):
            index.put_document(_doc("d9", "x.md", "ws_missing"), _chunks("d9", "text"), [[1, 0, 0, 0]])

    def test_deleting_a_document_removes_it_from_both_searches(self, filled: DocumentIndex) -> None:
        assert filled.delete_document("ws_contract", "d1") is True
        assert filled.delete_document("ws_contract", "d1") is False
        assert filled.keyword_search("ws_contract", "router", 5) == []
        assert {h.chunk.doc_id for h in filled.vector_search("ws_contract", [1, 0, 0, 0], 5)} == {"d2"}

    def test_keyword_search_ranks_matching_chunks(self, filled: DocumentIndex) -> None:
        hits = filled.keyword_search("ws_contract", "red button router", 5)
        assert hits[0].chunk.text == "reset the router with the red button"
        assert hits[0].doc_name == "router.md" and hits[0].score > 0

    def test_keyword_search_takes_any_text_safely(self, filled: DocumentIndex) -> None:
        for query in ('"unclosed', "NEAR( AND OR *", "router's -- ; DROP TABLE", "???"):
            assert isinstance(filled.keyword_search("ws_contract", query, 5), list)

    def test_vector_search_is_nearest_first(self, filled: DocumentIndex) -> None:
        hits = filled.vector_search("ws_contract", [0.1, 0.9, 0, 0], 2)
        assert [h.chunk.text for h in hits] == [
            "wifi password on the sticker",
            "reset the router with the red button",
        ]
        assert hits[0].score > hits[1].score and hits[0].score <= 1.0 + 1e-6

    def test_search_filters_on_document_metadata(self, filled: DocumentIndex) -> None:
        assert {
            h.chunk.doc_id for h in filled.vector_search("ws_contract", [0, 0, 1, 0], 5, {"team": "net"})
        } == {"d1"}
        assert filled.keyword_search("ws_contract", "cake", 5, {"team": "net"}) == []
        assert [d.id for d in filled.list_documents("ws_contract", {"team": "kitchen"})] == ["d2"]

    def test_workspaces_do_not_see_each_other(self, filled: DocumentIndex) -> None:
        filled.put_workspace(_workspace("ws_other"))
        assert filled.keyword_search("ws_other", "router", 5) == []
        assert filled.vector_search("ws_other", [1, 0, 0, 0], 5) == []
        assert filled.delete_workspace("ws_contract")
        assert filled.list_documents("ws_contract") == []

    def test_documents_without_vectors_are_found_by_keywords_only(self, index: DocumentIndex) -> None:
        index.put_workspace(_workspace())
        index.put_document(_doc("d3", "notes.txt"), _chunks("d3", "unembedded note about turbines"), None)
        assert [h.chunk.doc_id for h in index.keyword_search("ws_contract", "turbines", 5)] == ["d3"]
        assert index.vector_search("ws_contract", [1, 0, 0, 0], 5) == []

    def test_a_document_without_text_is_kept_with_no_chunk(self, filled: DocumentIndex) -> None:
        """An empty file is a document of no chunk, embedded (an empty list of vectors) or not."""
        empty: list[list[float]] = []
        for vectors in (empty, None):
            filled.put_document(_doc("d4", "empty.txt"), [], vectors)
            found = filled.get_document("ws_contract", "d4")
            assert found is not None and found.name == "empty.txt"
            assert filled.document_chunks("ws_contract", "d4") == []
        assert {h.chunk.doc_id for h in filled.keyword_search("ws_contract", "router", 5)} == {"d1"}


class DocumentReaderContract:
    """Provide ``reader`` and ``sample``: ``(file name, its bytes, a phrase its text must hold)``."""

    @pytest.fixture
    def reader(self) -> DocumentReader:  # pragma: no cover - always overridden
        raise NotImplementedError("provide a `reader` fixture")

    @pytest.fixture
    def sample(self) -> tuple[str, bytes, str]:  # pragma: no cover - always overridden
        raise NotImplementedError("provide a `sample` fixture")

    def test_names_the_suffixes_it_reads(self, reader: DocumentReader) -> None:
        assert reader.suffixes and all(s.startswith(".") and s == s.lower() for s in reader.suffixes)

    def test_reads_text_with_positions(
        self, reader: DocumentReader, sample: tuple[str, bytes, str], tmp_path: Path
    ) -> None:
        name, data, phrase = sample
        path = tmp_path / name
        path.write_bytes(data)
        blocks = reader.read(path, data)
        assert blocks and all(isinstance(b, TextBlock) for b in blocks)
        assert any(phrase in b.text for b in blocks)
        assert all(b.line >= 1 and (b.page is None or b.page >= 1) for b in blocks)
        assert all(isinstance(h, str) for b in blocks for h in b.headings)

    def test_refuses_what_it_cannot_read(self, reader: DocumentReader, tmp_path: Path) -> None:
        data = bytes(range(256)) * 64
        path = tmp_path / f"garbage{reader.suffixes[0]}"
        path.write_bytes(data)
        with pytest.raises(UnreadableDocumentError):
            reader.read(path, data)
