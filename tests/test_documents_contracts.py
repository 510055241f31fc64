"""The document contract suites, run by every first-party embedder, index and reader (real parts:
the packaged all-MiniLM GGUF in llama.cpp, the SQLite index on disk, the readers on real files)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from oblix.testing import DocumentIndexContract, DocumentReaderContract, EmbedderContract

pytest.importorskip("oblix_docs")

from oblix_docs import readers
from oblix_docs.embedder import LocalEmbedder
from oblix_docs.sqlite_index import SqliteDocumentIndex


@pytest.fixture(scope="module")
def local_embedder() -> Iterator[LocalEmbedder]:
    embedder = LocalEmbedder()
    yield embedder
    embedder.close()


class TestLocalEmbedder(EmbedderContract):
    @pytest.fixture
    def embedder(self, local_embedder: LocalEmbedder) -> LocalEmbedder:
        return local_embedder


class TestSqliteIndex(DocumentIndexContract):
    @pytest.fixture
    def index(self, tmp_path: Path) -> Iterator[SqliteDocumentIndex]:
        index = SqliteDocumentIndex(tmp_path / "index.sqlite3")
        yield index
        index.close()


def _pdf(text: str) -> bytes:
    """A one-page PDF holding ``text``, written by pypdf itself (a real PDF, no fixture file)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=200)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


SAMPLES = {
    "text": (
        "notes.txt",
        "First paragraph.\n\nThe turbine spins at 3000 rpm.\n".encode("utf-16"),
        "3000 rpm",
    ),
    "markdown": ("guide.md", b"# Guide\n\n## Reset\n\nHold the red button.\n", "red button"),
    "code": ("tool.py", b"import os\n\n\ndef launch(speed):\n    return speed * 2\n", "def launch"),
    "html": (
        "page.html",
        b"<html><head><script>var hidden=1;</script></head><body><h1>Help</h1>"
        b"<p>Call the support desk.</p></body></html>",
        "support desk",
    ),
    "pdf": ("manual.pdf", None, "warranty lasts two years"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
class TestReaders(DocumentReaderContract):
    @pytest.fixture
    def reader(self, kind: str) -> readers.DocumentReader:
        return readers.READERS[kind]()

    @pytest.fixture
    def sample(self, kind: str) -> tuple[str, bytes, str]:
        name, data, phrase = SAMPLES[kind]
        return name, data if data is not None else _pdf(phrase), phrase
