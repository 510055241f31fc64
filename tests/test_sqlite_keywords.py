"""The SQLite index's keyword search (term counts + BM25 in numpy) against FTS5's own ``bm25()``:
the same ranked chunks with the same scores, on real text (pydoc's documentation of a few modules)
and in a file written by the previous version (FTS5 only), which is migrated when opened."""

from __future__ import annotations

import json
import pydoc
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np
import pytest

pytest.importorskip("oblix_docs")

from oblix_core.documents.records import Chunk, DocumentEntry, Workspace
from oblix_docs.keywords import TOKENIZER, query_words, stable_order
from oblix_docs.sqlite_index import SqliteDocumentIndex

V1_FILE = Path(__file__).parent / "data" / "documents_index_v1.sqlite3"
MODULES = ("json", "csv", "heapq", "bisect", "textwrap", "shutil", "fnmatch", "difflib")
QUERIES = (
    "How do I read a comma separated file?",
    "heap queue push pop smallest item",
    "Wrap a long paragraph of TEXT to a given width",
    "returns returned return",  # three words, one stem: counted three times, as FTS5 does
    "café naïve résumé",  # diacritics removed as FTS5 removes them
    "the of and",  # stop words only: kept
    "insertion point sorted list",
    "zzzunknownword copy file permission",
    "json",  # a word in most chunks' heads (idf floored at 1e-6 where it is in over half)
)


def _corpus() -> list[tuple[str, list[Chunk]]]:
    docs = []
    for d, module in enumerate(MODULES):
        text = pydoc.plain(pydoc.plaintext.document(__import__(module)))[:20000]  # type: ignore[attr-defined]
        lines = text.splitlines()
        parts = [" ".join(lines[i : i + 7]) for i in range(0, len(lines), 7)]
        chunks = [
            Chunk(f"d{d}", i, part, i + 1, i + 7, None, (module.upper(), f"Part {i // 5}"))
            for i, part in enumerate(parts)
        ]
        chunks.append(Chunk(f"d{d}", len(parts), parts[0], 1, 7, None, (module.upper(), "Part 0")))  # a tie
        docs.append((f"{module}.txt", chunks))
    return docs


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteDocumentIndex]:
    idx = SqliteDocumentIndex(tmp_path / "index.sqlite3")
    yield idx
    idx.close()


def _fill(index: SqliteDocumentIndex, ws: str) -> None:
    index.put_workspace(Workspace(id=ws, name=ws, embedder="test", dimension=2))
    for d, (name, chunks) in enumerate(_corpus()):
        doc = DocumentEntry(id=f"d{d}", workspace_id=ws, name=name, embedder="test", metadata={"n": d % 2})
        index.put_document(doc, chunks, None)


def _fts5_ranking(db: sqlite3.Connection, table: str, query: str) -> list[tuple[int, float]]:
    """FTS5's ranking of the chunks for the query as the previous version built it."""
    match = " OR ".join(f'"{w}"' for w in query_words(query))
    return db.execute(
        f"SELECT rowid, -bm25({table}) FROM {table} WHERE {table} MATCH ? ORDER BY bm25({table}), rowid",
        (match,),
    ).fetchall()


def _reference(path: Path, ws: str) -> sqlite3.Connection:
    """An FTS5 table (the tokenizer of the index) holding the workspace's chunks, with their rowids."""
    source = sqlite3.connect(path)
    rows = source.execute(
        "SELECT c.rowid, c.text, d.name, c.headings FROM chunks c JOIN documents d "
        "ON d.workspace_id = c.workspace_id AND d.id = c.doc_id WHERE c.workspace_id = ?",
        (ws,),
    ).fetchall()
    source.close()
    ref = sqlite3.connect(":memory:")
    ref.execute(f"CREATE VIRTUAL TABLE ref USING fts5 (text, heads, tokenize = '{TOKENIZER}')")
    ref.executemany(
        "INSERT INTO ref (rowid, text, heads) VALUES (?, ?, ?)",
        [(r, text, " ".join((name, *json.loads(heads)))) for r, text, name, heads in rows],
    )
    return ref


def _ranking(index: SqliteDocumentIndex, ws: str, query: str, k: int) -> list[tuple[int, float]]:
    """The index's ranking, as (rowid, score)."""
    db = sqlite3.connect(index.path)
    rowid = {(d, i): r for r, d, i in db.execute("SELECT rowid, doc_id, chunk_idx FROM chunks")}
    db.close()
    return [(rowid[(h.chunk.doc_id, h.chunk.chunk_idx)], h.score) for h in index.keyword_search(ws, query, k)]


def _assert_same(found: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [r for r, _ in found] == [r for r, _ in expected]
    assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-9, abs=0)


@pytest.mark.parametrize("query", QUERIES)
def test_scores_and_order_are_fts5_bm25s(index: SqliteDocumentIndex, query: str) -> None:
    _fill(index, "ws")
    ref = _reference(index.path, "ws")
    expected = _fts5_ranking(ref, "ref", query)
    assert len(expected) > 3 or query.startswith("café")  # the queries match something real
    _assert_same(_ranking(index, "ws", query, 10_000), expected)
    _assert_same(_ranking(index, "ws", query, 7), expected[:7])  # the cut keeps FTS5's order, ties too


def test_ties_are_broken_by_rowid_like_fts5(index: SqliteDocumentIndex) -> None:
    _fill(index, "ws")
    found = _ranking(index, "ws", "json", 10_000)
    scores = [s for _, s in found]
    assert len(scores) != len(set(scores))  # the duplicated chunks tie
    _assert_same(found, _fts5_ranking(_reference(index.path, "ws"), "ref", "json"))


def test_a_word_fts5_cuts_in_two_counts_as_its_two_tokens(index: SqliteDocumentIndex) -> None:
    _fill(index, "ws")
    ref = _reference(index.path, "ws")
    expected = ref.execute(
        "SELECT rowid, -bm25(ref) FROM ref WHERE ref MATCH ? ORDER BY bm25(ref), rowid",
        ('"unified" OR "diff"',),
    ).fetchall()
    _assert_same(_ranking(index, "ws", "unified_diff", 10_000), expected)


def test_each_workspace_is_scored_on_its_own_chunks(index: SqliteDocumentIndex) -> None:
    _fill(index, "a")
    alone = _ranking(index, "a", "heap queue smallest", 50)
    index.put_workspace(Workspace(id="b", name="b", embedder="test", dimension=2))
    doc = DocumentEntry(id="x", workspace_id="b", name="x.txt", embedder="test")
    index.put_document(doc, [Chunk("x", i, f"heap heap queue {i}") for i in range(30)], None)
    assert _ranking(index, "a", "heap queue smallest", 50) == alone  # b's chunks change nothing in a
    assert {h.chunk.doc_id for h in index.keyword_search("b", "heap", 50)} == {"x"}
    index.delete_workspace("b")
    assert index.keyword_search("b", "heap", 5) == []
    assert _ranking(index, "a", "heap queue smallest", 50) == alone


def test_replacing_and_deleting_documents_rescores_from_what_is_left(index: SqliteDocumentIndex) -> None:
    _fill(index, "ws")
    index.keyword_search("ws", "heap", 5)  # the postings are cached here
    index.delete_document("ws", "d2")  # heapq.txt
    corpus = dict(_corpus())
    doc = DocumentEntry(id="d0", workspace_id="ws", name="json.txt", embedder="test")
    index.put_document(doc, [attrs.evolve(c, doc_id="d0") for c in corpus["csv.txt"][:3]], None)
    ref = _reference(index.path, "ws")
    for query in ("heap queue smallest", "comma separated reader"):
        _assert_same(_ranking(index, "ws", query, 10_000), _fts5_ranking(ref, "ref", query))
    assert "d2" not in {h.chunk.doc_id for h in index.keyword_search("ws", "heapq", 100)}


def test_a_change_by_another_process_is_seen(tmp_path: Path) -> None:
    first = SqliteDocumentIndex(tmp_path / "index.sqlite3")
    _fill(first, "ws")
    assert first.keyword_search("ws", "turbine", 5) == []
    second = SqliteDocumentIndex(tmp_path / "index.sqlite3")  # another connection, as another process
    doc = DocumentEntry(id="t", workspace_id="ws", name="t.txt", embedder="test")
    second.put_document(doc, [Chunk("t", 0, "the turbines spin")], None)
    second.close()
    assert [h.chunk.doc_id for h in first.keyword_search("ws", "turbine", 5)] == ["t"]
    first.close()


def test_a_filter_gives_k_matching_chunks_in_fts5_order(index: SqliteDocumentIndex) -> None:
    _fill(index, "ws")
    ref = _reference(index.path, "ws")
    db = sqlite3.connect(index.path)
    odd = {r for (r,) in db.execute("SELECT rowid FROM chunks WHERE doc_id IN ('d1', 'd3', 'd5', 'd7')")}
    db.close()
    expected = [(r, s) for r, s in _fts5_ranking(ref, "ref", "read write file") if r in odd][:40]
    hits = index.keyword_search("ws", "read write file", 40, {"n": 1})
    assert len(hits) == 40 and {h.chunk.doc_id for h in hits} <= {"d1", "d3", "d5", "d7"}
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-9, abs=0)


def test_a_file_of_the_previous_version_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    shutil.copyfile(V1_FILE, path)
    old = sqlite3.connect(path)  # what that file's own FTS5 table ranks
    queries = ("encode a python object as json", "heap smallest item", "dialect delimiter quoting", "wrap")
    expected = {q: _fts5_ranking(old, "chunks_fts", q) for q in queries}
    (chunks,) = old.execute("SELECT count(*) FROM chunks").fetchone()
    old.close()
    index = SqliteDocumentIndex(path)
    try:
        db = sqlite3.connect(path)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        (counted,) = db.execute("SELECT count(*) FROM chunk_terms").fetchone()
        db.close()
        assert "chunks_fts" not in tables and counted == chunks == 60
        for query in queries:
            assert expected[query]
            _assert_same(_ranking(index, "ws_v1", query, 10_000), expected[query])
        assert [h.chunk.doc_id for h in index.vector_search("ws_v1", [1, 0, 0, 0.5], 3)]
        assert index.stats("ws_v1")["chunks"] == 60
    finally:
        index.close()
    reopened = SqliteDocumentIndex(path)  # nothing left to migrate
    assert _ranking(reopened, "ws_v1", "wrap", 10_000) == _ranking(reopened, "ws_v1", "wrap", 10_000)
    reopened.close()


def test_the_cache_is_compact(index: SqliteDocumentIndex) -> None:
    _fill(index, "ws")
    index.keyword_search("ws", "heap", 1)
    postings = index._postings["ws"][1]
    assert postings.chunks.dtype.itemsize == 4 and postings.freqs.dtype.itemsize == 2
    assert postings.nbytes < 8 * len(postings.chunks) + 20 * len(postings.rowids) + 16 * len(postings.terms)


@pytest.mark.parametrize("high", [300, 70_000, 2**32 - 1])
def test_the_radix_order_is_numpys_stable_order(high: int) -> None:
    keys = np.random.default_rng(5).integers(0, high, 50_000, dtype=np.int64).astype(np.uint32)
    assert (stable_order(keys) == np.argsort(keys, kind="stable")).all()
