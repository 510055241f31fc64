"""Keyword search of the embedded index: FTS5's words, BM25 scored with numpy.

A chunk's words are counted once, when it is written: its text and its "heads" (the
document's name and the chunk's heading path) go through a TEMP FTS5 table with the
tokenizer the index has always used (``porter unicode61 remove_diacritics 2``), and an
``fts5vocab`` table over it gives each term's count in each chunk. Those counts are kept in
the index file (``chunk_terms``: term ids and counts as two little-endian arrays per chunk;
``terms``: term -> id) in the transaction that writes the chunk.

A search reads them once per workspace version into :class:`Postings` (compressed rows by
term: the chunks holding each term, with the term's count) and scores BM25 with FTS5's own
formula (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)) floored at 1e-6; a chunk's
length is its tokens in text and heads), so the scores are those FTS5's ``bm25()`` gives
for the same chunks, without its per-row function calls.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable, Sequence

import attrs
import numpy as np

TOKENIZER = "porter unicode61 remove_diacritics 2"
K1 = 1.2
B = 0.75
#: The smallest idf FTS5 gives a term (one in over half the chunks would otherwise score <= 0).
MIN_IDF = 1e-6

SCHEMA = """
CREATE TABLE IF NOT EXISTS terms (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS chunk_terms (
    chunk INTEGER PRIMARY KEY, workspace_id TEXT NOT NULL, length INTEGER NOT NULL,
    ids BLOB NOT NULL, counts BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_terms_by_workspace ON chunk_terms (workspace_id, chunk);
"""
_TEMP = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS temp.words USING fts5 (
    text, heads, content = '', tokenize = '{TOKENIZER}'
);
CREATE VIRTUAL TABLE IF NOT EXISTS temp.words_vocab USING fts5vocab (temp, words, 'instance');
"""
_WORDS = re.compile(r"\w+", re.UNICODE)

#: Words too common to say what a chunk is about: left out of keyword queries (unless the
#: query has nothing else), which also keeps a query from matching nearly every chunk.
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    }
)


def query_words(query: str) -> list[str]:
    """The query's distinct words (lower case) but stop words, unless it has nothing else."""
    words = list(dict.fromkeys(w.lower() for w in _WORDS.findall(query)))
    return [w for w in words if w not in STOPWORDS] or words


class Tokenizer:
    """FTS5's tokenizer on one connection, through a TEMP table (the caller holds its lock)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(_TEMP)

    def counts(self, rows: Iterable[tuple[int, str, str]]) -> dict[int, dict[str, int]]:
        """``{chunk: {term: count}}`` for ``(chunk, text, heads)`` rows (every chunk, even one
        without a term)."""
        rows = list(rows)
        found: dict[int, dict[str, int]] = {chunk: {} for chunk, _, _ in rows}
        self._db.executemany("INSERT INTO temp.words (rowid, text, heads) VALUES (?, ?, ?)", rows)
        try:
            for chunk, term, count in self._db.execute(
                "SELECT doc, term, count(*) FROM temp.words_vocab GROUP BY term, doc"
            ):
                found[chunk][term] = count
        finally:
            self._clear()
        return found

    def _clear(self) -> None:
        # a contentless table: emptied at once, not row by row (a row's delete re-reads its text)
        self._db.execute("INSERT INTO temp.words (words) VALUES ('delete-all')")

    def query_terms(self, query: str) -> list[str]:
        """The terms of the query's words (see :func:`query_words`), in order, one per word's
        token: a word FTS5 cuts in several (``add_argument``) gives each of its tokens."""
        self._db.execute(
            "INSERT INTO temp.words (rowid, text, heads) VALUES (0, ?, '')", (" ".join(query_words(query)),)
        )
        try:
            return [t for (t,) in self._db.execute("SELECT term FROM temp.words_vocab ORDER BY offset")]
        finally:
            self._clear()


def term_ids(db: sqlite3.Connection, terms: set[str], *, create: bool) -> dict[str, int]:
    """The ids of ``terms`` (those not yet known are added when ``create``)."""
    wanted = sorted(terms)
    if create:
        db.executemany("INSERT OR IGNORE INTO terms (term) VALUES (?)", ((t,) for t in wanted))
    ids: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        part = wanted[start : start + 500]
        marks = ",".join("?" * len(part))
        ids.update((t, i) for i, t in db.execute(f"SELECT id, term FROM terms WHERE term IN ({marks})", part))
    return ids


def write_chunk_terms(
    db: sqlite3.Connection, tokenizer: Tokenizer, workspace_id: str, rows: Sequence[tuple[int, str, str]]
) -> None:
    """Count the words of ``(chunk, text, heads)`` rows and keep them (inside the caller's transaction)."""
    counted = tokenizer.counts(rows)
    ids = term_ids(db, {t for terms in counted.values() for t in terms}, create=True)
    db.executemany(
        "INSERT OR REPLACE INTO chunk_terms (chunk, workspace_id, length, ids, counts) "
        "VALUES (?, ?, ?, ?, ?)",
        (_encoded(chunk, workspace_id, terms, ids) for chunk, terms in counted.items()),
    )


def _encoded(
    chunk: int, workspace_id: str, terms: dict[str, int], ids: dict[str, int]
) -> tuple[int, str, int, bytes, bytes]:
    term_array = np.fromiter((ids[t] for t in terms), dtype="<u4", count=len(terms))
    counts = np.fromiter(terms.values(), dtype=np.int64, count=len(terms))
    # two bytes a count; four for a chunk that holds a term over 65,535 times (read by its size)
    width = "<u2" if not len(counts) or counts.max() <= 0xFFFF else "<u4"
    return chunk, workspace_id, int(counts.sum()), term_array.tobytes(), counts.astype(width).tobytes()


@attrs.frozen
class Postings:
    """One workspace's chunks by term, read from ``chunk_terms`` (rowid order)."""

    rowids: np.ndarray  # int64 [N]: the chunks, by rowid
    norm: np.ndarray  # float64 [N]: k1 * (1 - b + b * length / avgdl), BM25's length term
    terms: np.ndarray  # uint32 [T]: the term ids present, sorted
    starts: np.ndarray  # int64 [T + 1]: term i's postings are [starts[i], starts[i + 1])
    chunks: np.ndarray  # int32 [P]: positions in rowids
    freqs: np.ndarray  # uint16 or uint32 [P]: the term's count in the chunk

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.rowids, self.norm, self.terms, self.starts, self.chunks, self.freqs)
        )

    def score(self, query_ids: Sequence[int | None]) -> np.ndarray:
        """BM25 of every chunk (0 for one without a query term), the terms added in query order."""
        n_chunks = len(self.rowids)
        scores = np.zeros(n_chunks, dtype=np.float64)
        for term in query_ids:
            i = int(np.searchsorted(self.terms, term)) if term is not None else len(self.terms)
            if i == len(self.terms) or self.terms[i] != term:
                continue  # in no chunk: FTS5 adds 0 for it
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            at, freq = self.chunks[lo:hi], self.freqs[lo:hi].astype(np.float64)
            n = hi - lo
            idf = math.log((n_chunks - n + 0.5) / (n + 0.5))
            idf = idf if idf > 0.0 else MIN_IDF
            scores[at] += idf * ((freq * (K1 + 1.0)) / (freq + self.norm[at]))
        return scores


def best(scores: np.ndarray, want: int | None) -> np.ndarray:
    """Positions of the ``want`` best scores above 0 (all of them for ``None``), best first, ties
    by position (rowid order, as FTS5's ``ORDER BY bm25(...), rowid``)."""
    found = np.flatnonzero(scores > 0.0)
    top = scores[found]
    if want is not None and len(found) > want:
        kth = np.partition(top, len(top) - want)[len(top) - want]
        keep = top >= kth  # every tie of the last one kept, then cut after sorting
        found, top = found[keep], top[keep]
    order = np.lexsort((found, -top))
    return found[order][:want] if want is not None else found[order]


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for keys in [0, 2**32), by numpy's radix sort of 16-bit
    keys (once, or twice: low half then high half), several times faster than a merge sort."""
    if not len(keys) or int(keys.max()) < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]


def load_postings(db: sqlite3.Connection, workspace_id: str) -> Postings:
    """The workspace's :class:`Postings` (the caller holds the connection's lock)."""
    rows = db.execute(
        "SELECT chunk, length, ids, counts FROM chunk_terms WHERE workspace_id = ? ORDER BY chunk",
        (workspace_id,),
    ).fetchall()
    n_chunks = len(rows)
    rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n_chunks)
    lengths = np.fromiter((r[1] for r in rows), dtype=np.float64, count=n_chunks)
    sizes = np.fromiter((len(r[2]) // 4 for r in rows), dtype=np.int64, count=n_chunks)
    ids = np.frombuffer(b"".join(r[2] for r in rows), dtype="<u4")
    counts = b"".join(r[3] for r in rows)
    if len(counts) == 2 * len(ids):
        freqs: np.ndarray = np.frombuffer(counts, dtype="<u2")
    else:  # some chunk holds a term over 65,535 times: read each chunk's counts by their size
        freqs = np.concatenate(
            [
                np.frombuffer(r[3], dtype="<u2" if len(r[3]) == 2 * s else "<u4")
                for r, s in zip(rows, sizes, strict=True)
            ]
            or [np.zeros(0, dtype="<u4")]
        ).astype(np.uint32)
    del rows
    avgdl = lengths.sum() / n_chunks if n_chunks else 1.0
    norm = K1 * ((1.0 - B) + (B * lengths) / avgdl)
    positions = np.repeat(np.arange(n_chunks, dtype=np.int32), sizes)
    tally = np.bincount(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    terms = np.flatnonzero(tally).astype(np.uint32)
    dense = np.zeros(len(tally), dtype=np.int32)
    dense[terms] = np.arange(len(terms), dtype=np.int32)
    order = stable_order(dense[ids])  # by term, each term's chunks in rowid order
    starts = np.concatenate(([0], np.cumsum(tally[terms]))).astype(np.int64)
    return Postings(rowids, norm, terms, starts, positions[order], freqs[order])
