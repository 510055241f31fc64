"""Keyword search of the pgvector index: per-word postings ordered by count, then ``ts_rank_cd``.

Ranking every chunk that holds any of the query's words (``ts_rank_cd`` reads each one's
``tsvector``) took 200-280 ms at 100k chunks. Instead a ``postings`` table keeps, for each
chunk and each of its lexemes, how often the lexeme occurs (``tf``), indexed by
(workspace, lexeme, tf descending). A search takes, for each of the query's lexemes, the
:func:`depth` chunks where it occurs most often, and ranks only those candidates by
``ts_rank_cd`` as before (the same score, the same ties by row id). ``ts_rank_cd`` of an OR
query adds at most 0.1 per occurrence of a query word, so the chunks it ranks highest are
nearly always among the candidates; a chunk with a middling count of every word can be
missed (approximate, as the HNSW vector search is; the benchmark measures how much).

A trigger on the chunks table writes and removes a chunk's postings in the statement that
writes or removes the chunk, so they change in the same transaction as the chunks, from any
client (an older Oblix on the same tables included), and need no shared statistics that
concurrent writers would contend for. An index made before postings existed is filled
once, when a client of this version first opens it (:func:`migrate`).
"""

from __future__ import annotations

from typing import Any

#: Candidates per query word: the chunks where it occurs most, at least this many.
MIN_DEPTH = 500

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
_SEARCH = """
WITH cand AS MATERIALIZED (
    SELECT DISTINCT top.chunk_id
    FROM unnest(tsvector_to_array(to_tsvector('english', %(words)s))) AS t(term),
    LATERAL (
        SELECT p.chunk_id FROM {p}postings p {join}
        WHERE p.workspace_id = %(ws)s AND p.term = t.term {filter}
        ORDER BY p.tf DESC, p.chunk_id LIMIT %(depth)s
    ) AS top
), best AS MATERIALIZED (
    SELECT c.id, c.workspace_id, c.doc_id, c.chunk_idx, c.text, c.line_start, c.line_end, c.page,
           c.headings, ts_rank_cd(c.tsv, q.query) AS score
    FROM cand JOIN {p}chunks c ON c.id = cand.chunk_id, to_tsquery('english', %(query)s) AS q(query)
    WHERE c.tsv @@ q.query
    ORDER BY score DESC, c.id LIMIT %(k)s
)
SELECT b.doc_id, b.chunk_idx, b.text, b.line_start, b.line_end, b.page, b.headings, b.score, d.name
FROM best b JOIN {p}documents d ON d.workspace_id = b.workspace_id AND d.id = b.doc_id
ORDER BY b.score DESC, b.id
"""


def depth(k: int) -> int:
    """Candidates taken per query word for ``k`` results."""
    return max(MIN_DEPTH, 10 * k)


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
