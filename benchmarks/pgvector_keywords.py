"""pgvector keyword search: BM25 over the postings table beside the previous release's
``ts_rank_cd`` over every matching chunk, alternated in one run.

*Before* is the 0.1.x query (``ts_rank_cd`` over every chunk that holds any query word,
kept here as :class:`RankEveryMatch`); *BM25* is ``PgVectorDocumentIndex.keyword_search``
(candidates from the postings table, scored by BM25); *BM25 exact* is the same with every
chunk that holds a query word as a candidate (the reference its approximation is measured by).
All run on the same tables, query by query in turn, so load affects them alike.

* ``--quality``: the pydoc corpus and questions of ``benchmarks.docs_bench`` ingested into
  pgvector with the local embedder; recall@5, MRR and "answer in top 5 chunks" for keyword
  and hybrid search (``Library.search``) with each ranking, and with BM25 taking only
  ``10 * k`` candidates a word (as in a corpus much larger than this one).
* ``--latency N``: N synthetic chunks (``docs_bench``'s: 120 words of the ``os`` docs each,
  384-dim random vectors), 50 six-word queries, 20 results: p50/p99 of each (BM25 with its
  word weights held, and counted afresh for every query), how many of the exact BM25 top 20
  the search returns, and the ratio of the sums of their scores.

    .venv/bin/python -m benchmarks.pgvector_keywords --quality --latency 100000
    .venv/bin/python -m benchmarks.pgvector_keywords --latency 100000 --dsn URL --prefix bench_
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pydoc
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from benchmarks._table import median_ms, p99_ms, print_table
from benchmarks.docs_bench import ANSWER_TERMS, QUESTIONS, build_corpus, postgres
from oblix.plugin import SearchHit
from oblix_pgvector import keywords
from oblix_pgvector.index import PgVectorDocumentIndex, _chunk, ts_query
from oblix_pgvector.keywords import MIN_DEPTH, WHOLE_LIST

#: A depth that takes every chunk holding a query word (exact BM25).
EVERY_MATCH = 10**9


class RankEveryMatch(PgVectorDocumentIndex):
    """The keyword search before the postings table (the previous release's query)."""

    def keyword_search(
        self, workspace_id: str, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        words = ts_query(query)
        if not words:
            return []
        sql = self._HIT.format(
            p="{p}", score="ts_rank_cd(c.tsv, q.query)", match="c.tsv @@ q.query", order="8 DESC, c.id"
        ).replace("WHERE", ", to_tsquery('english', %s) AS q(query) WHERE", 1)
        rows = self._rows(sql, (words, workspace_id, json.dumps(where or {}), k))
        return [SearchHit(_chunk(r[:7]), float(r[7]), r[8], {"workspace_id": workspace_id}) for r in rows]


def quality(dsn: str) -> list[list[object]]:
    from oblix_core.client import OblixClient
    from oblix_core.documents.library import Library

    async def main() -> list[list[object]]:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            with contextlib.redirect_stdout(io.StringIO()):
                build_corpus(root / "corpus", 12000)
            async with OblixClient(home=root / "home") as client:
                client.use_document_index("pgvector", dsn=dsn, prefix="quality_")
                await client.register_connector("directory", str(root / "corpus"), alias="pydoc")
                rows: list[list[object]] = []
                variants: list[tuple[str, type[PgVectorDocumentIndex], int]] = [
                    ("before (ts_rank_cd)", RankEveryMatch, MIN_DEPTH),
                    ("BM25", PgVectorDocumentIndex, MIN_DEPTH),
                    ("BM25, 10 a word", PgVectorDocumentIndex, 0),  # as in a corpus ~100x larger
                    ("BM25 exact", PgVectorDocumentIndex, EVERY_MATCH),
                ]
                for label, kind, least in variants:
                    keywords.MIN_DEPTH = least
                    keywords.WHOLE_LIST = WHOLE_LIST if least else 0
                    index = kind(dsn, prefix="quality_")
                    library = Library(index, client._embedder_for, {})
                    (workspace,) = index.list_workspaces()
                    for mode in ("keyword", "hybrid"):
                        rows.append([label, mode, *_scores(library, workspace, mode)])
                    index.close()
                return rows

    return anyio.run(main)


def _scores(library: Any, workspace: Any, mode: str) -> list[str]:
    found, rr, answered = 0, 0.0, 0
    for question, module in QUESTIONS.items():
        hits = library.search(workspace, question, 5, mode=mode)
        names = list(dict.fromkeys(h.doc_name for h in hits))
        if f"{module}.txt" in names:
            found += 1
            rr += 1 / (names.index(f"{module}.txt") + 1)
        term = ANSWER_TERMS[question]
        answered += any(h.doc_name == f"{module}.txt" and term in h.chunk.text for h in hits)
    n = len(QUESTIONS)
    return [f"{found / n:.2f}", f"{rr / n:.2f}", f"{answered / n:.2f}"]


def fill(index: PgVectorDocumentIndex, chunks: int) -> list[str]:
    """``docs_bench``'s synthetic workspace ``ws`` (written unless it holds ``chunks`` already)
    and its 50 queries."""
    import numpy as np

    from oblix_core.documents.records import Chunk, DocumentEntry, Workspace

    rng = random.Random(7)
    text = pydoc.plain(pydoc.plaintext.document(pydoc.importlib.import_module("os")))  # type: ignore[attr-defined]
    words = [w for w in text.split() if w.isalpha()][:5000]
    if index.stats("ws")["chunks"] != chunks:
        index.put_workspace(Workspace(id="ws", name="ws", embedder="bench", dimension=384))
        vectors: Any = np.random.default_rng(7).standard_normal((chunks, 384)).astype(np.float32)
        for d in range(chunks // 100):
            doc = DocumentEntry(id=f"d{d}", workspace_id="ws", name=f"doc{d}.txt", embedder="bench")
            items = [Chunk(f"d{d}", i, " ".join(rng.choices(words, k=120))) for i in range(100)]
            index.put_document(doc, items, vectors[d * 100 : (d + 1) * 100].tolist())
    else:
        for _ in range(chunks):  # the same random draws, so the same queries
            rng.choices(words, k=120)
    return [" ".join(rng.choices(words, k=6)) for _ in range(50)]


def latency(dsn: str, chunks: int, prefix: str) -> list[list[object]]:
    new = PgVectorDocumentIndex(dsn, prefix=prefix)
    old = RankEveryMatch(dsn, prefix=prefix)
    queries = fill(new, chunks)
    labels = ("before", "BM25", "BM25, weights counted", "BM25 exact")
    times: dict[str, list[float]] = {label: [] for label in labels}
    overlap, ratio = [], []
    for query in queries:
        _timed(times["before"], lambda q=query: old.keyword_search("ws", q, 20))
        new._terms.forget("ws")
        _timed(times["BM25, weights counted"], lambda q=query: new.keyword_search("ws", q, 20))
        found = _timed(times["BM25"], lambda q=query: new.keyword_search("ws", q, 20))
        keywords.MIN_DEPTH = EVERY_MATCH
        exact = _timed(times["BM25 exact"], lambda q=query: new.keyword_search("ws", q, 20))
        keywords.MIN_DEPTH = MIN_DEPTH
        overlap.append(len(_keys(found) & _keys(exact)) / max(1, len(exact)))
        ratio.append(sum(h.score for h in found) / max(1e-9, sum(h.score for h in exact)))
    old.close()
    new.close()
    found = [f"{statistics.mean(overlap):.2f}", f"{statistics.mean(ratio):.3f}"]
    rows: list[list[object]] = []
    for label, t in times.items():
        rows.append([label, f"{chunks:,}", f"{median_ms(t):.1f}", f"{p99_ms(t):.1f}"])
        rows[-1] += found if label == "BM25" else ["-", "-"]
    return rows


def _keys(hits: Sequence[SearchHit]) -> set[tuple[str, int]]:
    return {(h.chunk.doc_id, h.chunk.chunk_idx) for h in hits}


def _timed(times: list[float], func: Any) -> Any:
    started = time.perf_counter()
    result = func()
    times.append(time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", action="store_true", help="the recall table, before and after")
    parser.add_argument("--latency", type=int, metavar="CHUNKS", help="latency at CHUNKS synthetic chunks")
    parser.add_argument("--dsn", help="an existing Postgres with pgvector (default: one of its own)")
    parser.add_argument("--prefix", default="kwbench_", help="table prefix of the latency run")
    args = parser.parse_args()
    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    with postgres(args.dsn) as dsn:
        if args.quality:
            print(f"load average at start: {load()}", flush=True)
            print_table(
                "pgvector retrieval by document (all-MiniLM-L6-v2 Q8_0), keyword ranking before/after",
                ["keywords", "mode", "recall@5 (document)", "MRR (document)", "answer in top 5 chunks"],
                quality(dsn),
            )
        if args.latency:
            print(f"load average at start: {load()}", flush=True)
            print_table(
                "pgvector keyword search (ms; 20 results), alternated query by query",
                ["keywords", "chunks", "p50", "p99", "exact BM25 top 20 found", "score sum / exact"],
                latency(dsn, args.latency, args.prefix),
            )
        print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
