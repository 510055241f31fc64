"""Keyword search of the pgvector index: BM25 over per-word postings ordered by count.

Ranking every chunk that holds any of the query's words took 200-280 ms at 100k chunks
(``ts_rank_cd`` reading each one's ``tsvector``), and ``ts_rank_cd`` weighs every word
alike. Instead a ``postings`` table keeps, for each chunk and each of its lexemes, how
often the lexeme occurs (``tf``), indexed by (workspace, lexeme, tf descending), and a
search ranks by BM25 (``k1`` 1.2, as FTS5; no length term, chunks being cut to about one
size): each word's weight is its idf in the workspace (:class:`TermStats`), its candidates
the :func:`depth` chunks where it occurs most (every chunk holding it when at most
:data:`WHOLE_LIST` do); the candidates are scored from those lists, and the best
:func:`rescored` of them again with every word's count in each (one index probe a pair).
Exact for words held by few chunks; a chunk with a middling count of several common words
can be missed (approximate, as the HNSW vector search is; the benchmark measures how much).

A trigger on the chunks table writes and removes a chunk's postings in the statement that
writes or removes the chunk, so they change in the same transaction as the chunks, from any
client (an older Oblix on the same tables included), and need no shared statistics that
concurrent writers would contend for: the words' document frequencies are counted when a
search needs them and held a while (:data:`STATS_TTL`). An index made before postings
existed is filled once, when a client of this version first opens it (:func:`migrate`).
"""

from __future__ import annotations

import math
import time
from typing import Any

#: Candidates per query word: the chunks where it occurs most, at least this many.
MIN_DEPTH = 2000
#: Candidates scored again with the counts of every query word, at least this many.
RESCORED = 500
#: A query word held by at most this many chunks brings them all as candidates.
WHOLE_LIST = 5000

_TABLE = (
    "CREATE TABLE IF NOT EXISTS {p}postings (chunk_id bigint NOT NULL, workspace_id text NOT NULL, "
    "term text NOT NULL, tf smallint NOT NULL)"
)
# built after a backfill (faster than keeping them up to date row by row)
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS {p}postings_chunk ON {p}postings (chunk_id, term)",
    "CREATE INDEX IF NOT EXISTS {p}postings_top ON {p}postings (workspace_id, term, tf DESC, chunk_id)",
)
# a chunk's lexemes with their number of positions (a tsvector keeps at most 256 per lexeme)
_POSTINGS_OF = (
    "SELECT {chunk}.id, {chunk}.workspace_id, u.lexeme, coalesce(cardinality(u.positions), 1)::smallint "
    "FROM unnest({chunk}.tsv) AS u"
)
_FUNCTION = """
CREATE OR REPLACE FUNCTION {p}chunk_postings() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM {p}postings WHERE chunk_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {p}postings (chunk_id, workspace_id, term, tf) {postings_of};
    END IF;
    RETURN NULL;
END
$body$
""".replace("{postings_of}", _POSTINGS_OF.format(chunk="NEW"))
_TRIGGER = (
    "CREATE TRIGGER {p}chunks_postings AFTER INSERT OR UPDATE OR DELETE ON {p}chunks "
    "FOR EACH ROW EXECUTE FUNCTION {p}chunk_postings()"
)
_BACKFILL = "INSERT INTO {p}postings (chunk_id, workspace_id, term, tf) " + _POSTINGS_OF.format(
    chunk="c"
).replace("FROM", "FROM {p}chunks AS c,")

_FILTERED = (
    "JOIN {p}chunks pc ON pc.id = p.chunk_id "
    "JOIN {p}documents pd ON pd.workspace_id = pc.workspace_id AND pd.id = pc.doc_id",
    "AND pd.body->'metadata' @> %(where)s::jsonb",
)
# BM25 (k1 = 1.2, FTS5's; no length normalisation, b = 0: chunks are cut to about one size, and
# the pydoc recall table is the same or better without it) over each word's candidates, in two
# steps: first from the lists alone (a chunk outside a word's list scored without that word),
# then the best of those again with each word's count in each of them (one index probe a pair);
# scores rounded to 9 decimals, so that equal ones (summed in any order) tie and go by row id
_SEARCH = """
WITH w AS MATERIALIZED (
    SELECT * FROM unnest(%(terms)s::text[], %(weights)s::float8[], %(depths)s::int[]) AS w(term, idf, depth)
), parts AS MATERIALIZED (
    SELECT top.chunk_id, w.idf * top.tf * (1.2 + 1) / (top.tf + 1.2) AS part
    FROM w, LATERAL (
        SELECT p.chunk_id, p.tf FROM {p}postings p {join}
        WHERE p.workspace_id = %(ws)s AND p.term = w.term {filter}
        ORDER BY p.tf DESC, p.chunk_id LIMIT w.depth
    ) AS top
), first AS MATERIALIZED (
    SELECT chunk_id AS id FROM parts GROUP BY chunk_id ORDER BY sum(part) DESC, chunk_id LIMIT %(again)s
), best AS MATERIALIZED (
    SELECT f.id, round(sum(w.idf * x.tf * (1.2 + 1) / (x.tf + 1.2))::numeric, 9)::float8 AS score
    FROM first f CROSS JOIN w
    JOIN LATERAL (  -- LIMIT 1: probed by (chunk, word), not joined with a word's every posting
        SELECT p.tf FROM {p}postings p WHERE p.chunk_id = f.id AND p.term = w.term LIMIT 1
    ) AS x ON true
    GROUP BY f.id ORDER BY score DESC, f.id LIMIT %(k)s
)
SELECT c.doc_id, c.chunk_idx, c.text, c.line_start, c.line_end, c.page, c.headings, b.score, d.name
FROM best b JOIN {p}chunks c ON c.id = b.id
JOIN {p}documents d ON d.workspace_id = c.workspace_id AND d.id = c.doc_id
ORDER BY b.score DESC, b.id
"""


def depth(k: int) -> int:
    """Candidates taken per query word for ``k`` results."""
    return max(MIN_DEPTH, 10 * k)


def search_params(words: list[tuple[str, float, int]], k: int) -> dict[str, Any]:
    """The search's arrays for ``words`` (:meth:`TermStats.weights`): a word in at most
    :data:`WHOLE_LIST` chunks brings all of them (rare words weigh most), a commoner one the
    :func:`depth` where it occurs most."""
    return {
        "terms": [term for term, _, _ in words],
        "weights": [idf for _, idf, _ in words],
        "depths": [max(depth(k), df) if df <= WHOLE_LIST else depth(k) for _, _, df in words],
        "again": rescored(k),
        "k": k,
    }


def rescored(k: int) -> int:
    """Candidates scored again with every query word's count, for ``k`` results."""
    return max(RESCORED, 10 * k)


def search_sql(filtered: bool) -> str:
    """The keyword search (``{p}`` for the table prefix); ``filtered``: the metadata filter is
    applied while candidates are taken, so a filter still gets the best chunks that pass it.
    (The candidates come first, fenced: a join the planner started from the documents, whose
    metadata filter it cannot estimate, read every chunk of the workspace.)"""
    join, where = _FILTERED if filtered else ("", "")
    return _SEARCH.replace("{join}", join).replace("{filter}", where)


#: Relations of a complete schema (``index.SCHEMA`` and the postings above), by name suffix.
RELATIONS = (
    *("workspaces", "documents", "chunks", "chunks_doc", "chunks_tsv"),
    *("postings", "postings_chunk", "postings_top"),
)


def schema_complete(db: Any, prefix: str) -> bool:
    """Whether every table, index and the postings trigger exist, read from the catalog alone:
    ``CREATE INDEX IF NOT EXISTS`` locks its table even when the index exists, so opening an
    index with the schema statements would wait for every document write in flight."""
    row = db.execute(
        "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) AS n",
        ([prefix + name for name in RELATIONS],),
    ).fetchone()
    return bool(row[0]) and _has_trigger(db, prefix)


def _has_trigger(db: Any, prefix: str) -> bool:
    """Whether the chunks table has the trigger that keeps its postings."""
    found = db.execute(
        "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
        (f"{prefix}chunks", f"{prefix}chunks_postings"),
    ).fetchone()
    return found is not None


def migrate(db: Any, prefix: str) -> None:
    """The postings table and its trigger, in the caller's transaction (under the schema lock);
    filled from the chunks already there when the table is new (an index of an older version)."""
    fresh = db.execute("SELECT to_regclass(%s) IS NULL", (f"{prefix}postings",)).fetchone()[0]
    db.execute(_TABLE.format(p=prefix))
    has_trigger = _has_trigger(db, prefix)
    if not has_trigger:
        # the trigger takes a lock that waits for writers in flight and holds back new ones
        # until this commits, so the backfill below sees every chunk written without it
        db.execute(_FUNCTION.replace("{p}", prefix))
        db.execute(_TRIGGER.format(p=prefix))
    if fresh:
        db.execute(_BACKFILL.format(p=prefix))
    for statement in _INDEXES:
        db.execute(statement.format(p=prefix))
    if fresh:  # statistics for the planner at once (autovacuum would take a while to come)
        db.execute(f"ANALYZE {prefix}postings")
    if not fresh and not has_trigger:  # the table without its trigger: not made by this module
        db.execute(_BACKFILL.format(p=prefix) + " ON CONFLICT DO NOTHING")


#: Seconds a workspace's chunk count and its words' document frequencies are reused for.
STATS_TTL = 300.0
#: Words whose frequencies one index keeps (all forgotten when more).
MAX_CACHED_WORDS = 50_000


class TermStats:
    """Each query word's weight (BM25's idf) in a workspace, from its chunk count and the number
    of chunks holding the word (counted on the postings table and kept :data:`STATS_TTL`
    seconds: counting a common word at 100k chunks takes tens of milliseconds). This client's
    own writes to a workspace forget its figures (:meth:`forget`); other clients' writes show
    within the TTL. Not thread-safe by itself: the index calls it under its lock."""

    def __init__(self) -> None:
        #: Per workspace: when its chunks were counted, how many, and its words' (when, count).
        self._held: dict[str, tuple[float, int, dict[str, tuple[float, int]]]] = {}

    def weights(self, db: Any, prefix: str, workspace_id: str, query: str) -> list[tuple[str, float, int]]:
        """The query's lexemes (English stemming, stop words dropped), each with its idf and
        the number of chunks holding it."""
        (terms,) = db.execute(
            "SELECT array(SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', %s))))", (query,)
        ).fetchone()
        if not terms:
            return []
        now = time.monotonic()
        held = self._held.get(workspace_id)
        if held is None or now - held[0] > STATS_TTL:
            # the documents' own chunk counts: a few rows per document, not one per chunk
            sql = (
                f"SELECT coalesce(sum((body->>'chunk_count')::bigint), 0)::bigint FROM {prefix}documents "
                "WHERE workspace_id = %s"
            )
            held = self._held[workspace_id] = (now, db.execute(sql, (workspace_id,)).fetchone()[0], {})
        words = held[2]
        missing = [t for t in terms if t not in words or now - words[t][0] > STATS_TTL]
        if missing:
            if len(words) + len(missing) > MAX_CACHED_WORDS:
                words.clear()
            counted = db.execute(
                f"SELECT t, (SELECT count(*) FROM {prefix}postings p "
                "WHERE p.workspace_id = %s AND p.term = t) FROM unnest(%s::text[]) AS t",
                (workspace_id, missing),
            ).fetchall()
            words.update((term, (now, df)) for term, df in counted)
        dfs = [words[t][1] for t in terms]
        n = max([held[1], *dfs])  # a chunk count older than a word's: never a negative weight
        return [(t, math.log(1 + (n - df + 0.5) / (df + 0.5)), df) for t, df in zip(terms, dfs, strict=True)]

    def forget(self, workspace_id: str) -> None:
        """Drop a workspace's figures (this client changed its chunks)."""
        self._held.pop(workspace_id, None)
