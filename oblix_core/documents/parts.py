"""The three parts of retrieval, each a hook family with a contract suite (``oblix_core.testing``).

* :class:`Embedder` -- texts to vectors (``name`` and ``dimension`` stored with every vector);
  :class:`RemoteEmbedder` is one over an API, which learns its dimension from a first call;
* :class:`DocumentIndex` -- a workspace's documents and chunks: one document's chunks added,
  replaced or deleted as one unit, keyword and vector search with a metadata filter;
* :class:`DocumentReader` -- a file's bytes to text blocks with their positions.

Their methods block (file, network, CPU work); the client calls them in a worker thread.
"""

from __future__ import annotations

import ipaddress
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from oblix_core.documents.errors import EmbedderError
from oblix_core.documents.records import Chunk, DocumentEntry, SearchHit, TextBlock, Workspace

#: A vector as parts pass it: any sequence of floats (a list, or a row of a numpy array).
Vector = Sequence[float]


class Embedder(ABC):
    """Turns texts into vectors of :attr:`dimension` floats.

    ``name`` identifies the model (``"local:all-minilm-l6-v2"``, ``"openai:text-embedding-3-small"``)
    and is stored with every vector, so a workspace never mixes two embedders. ``is_local``
    says whether the texts stay on this machine (private workspaces accept only those).
    ``embed`` raises :class:`~oblix_core.documents.errors.EmbedderError` when it fails.
    """

    name: str = ""
    dimension: int = 0
    is_local: bool = False

    @abstractmethod
    def embed(self, texts: Sequence[str], *, query: bool = False) -> Sequence[Vector]:
        """One vector per text, in order; ``query=True`` for a search query (some models differ)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the embedder holds (a model, a connection pool)."""


class RemoteEmbedder(Embedder):
    """An embedder over an API at ``url`` (OpenAI, Ollama...): implement :meth:`_call`.

    :attr:`is_local` is whether ``url`` is a loopback address (the texts stay on this
    machine); :attr:`dimension` is the one given, else learnt from one call (once, under a
    lock); blank texts are sent as ``"."`` (APIs refuse empty input); an answer with another
    number of vectors than texts is an :class:`~oblix_core.documents.errors.EmbedderError`.
    """

    def __init__(self, url: str | None, dimension: int | None = None) -> None:
        self.is_local = _is_loopback(url)
        self._dimension = dimension
        self._dimension_lock = threading.Lock()

    @property
    def dimension(self) -> int:  # type: ignore[override]  # learnt from one call
        if self._dimension is None:
            with self._dimension_lock:
                if self._dimension is None:
                    self._dimension = len(self._call(["dimension probe"])[0])
        return self._dimension

    @abstractmethod
    def _call(self, texts: Sequence[str]) -> list[list[float]]:
        """The API's vectors for ``texts`` (none blank), in order; raise ``EmbedderError`` on failure."""

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._call([t if t.strip() else "." for t in texts])
        if len(vectors) != len(texts):
            raise EmbedderError(f"{self.name} answered {len(vectors)} vectors for {len(texts)} texts.")
        return vectors


def _is_loopback(url: str | None) -> bool:
    """Whether ``url`` (``http://host:port/...`` or ``host:port``) names this machine."""
    if not url:
        return False
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DocumentIndex(ABC):
    """Where workspaces, documents, chunks and their vectors are kept and searched.

    A document's chunks change as one unit: after :meth:`put_document` the index holds the
    new chunks or, if it failed or the process died, the old ones, never a mix and never
    a chunk without its document. Search results are best first.
    """

    name: str = ""

    @abstractmethod
    def put_workspace(self, workspace: Workspace) -> None:
        """Create or replace a workspace's record (its documents are kept)."""

    @abstractmethod
    def get_workspace(self, workspace_id: str) -> Workspace | None:
        """The workspace, or ``None``."""

    @abstractmethod
    def list_workspaces(self) -> list[Workspace]:
        """Every workspace, oldest first."""

    @abstractmethod
    def delete_workspace(self, workspace_id: str) -> bool:
        """Delete a workspace with all its documents; ``False`` if there was none."""

    @abstractmethod
    def put_document(
        self, document: DocumentEntry, chunks: Sequence[Chunk], vectors: Sequence[Vector] | None
    ) -> None:
        """Add or replace ``document`` with ``chunks`` (and one vector each, or none) as one unit."""

    @abstractmethod
    def get_document(self, workspace_id: str, doc_id: str) -> DocumentEntry | None:
        """The document, or ``None``."""

    @abstractmethod
    def list_documents(self, workspace_id: str, where: dict[str, Any] | None = None) -> list[DocumentEntry]:
        """The workspace's documents (those whose metadata matches ``where``), by name."""

    @abstractmethod
    def document_chunks(self, workspace_id: str, doc_id: str) -> list[Chunk]:
        """A document's chunks in order."""

    @abstractmethod
    def delete_document(self, workspace_id: str, doc_id: str) -> bool:
        """Delete a document and its chunks; ``False`` if there was none."""

    @abstractmethod
    def vector_search(
        self, workspace_id: str, vector: Vector, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """The ``k`` chunks nearest to ``vector`` (cosine similarity as the score)."""

    @abstractmethod
    def keyword_search(
        self, workspace_id: str, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """The ``k`` chunks that best match the words of ``query`` (a positive relevance score)."""

    def stats(self, workspace_id: str) -> dict[str, int]:
        """``documents``, ``chunks`` and ``bytes`` (of the source files) of a workspace."""
        docs = self.list_documents(workspace_id)
        return {
            "documents": len(docs),
            "chunks": sum(d.chunk_count for d in docs),
            "bytes": sum(d.size for d in docs),
        }

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""


class DocumentReader(ABC):
    """Reads the files of some types into text blocks with their positions.

    ``suffixes`` are the lower-case file name endings it reads (``".md"``). ``read``
    raises :class:`~oblix_core.documents.errors.UnreadableDocumentError` for a file it
    cannot read (binary, corrupt, an encoding it cannot tell).
    """

    name: str = ""
    suffixes: tuple[str, ...] = ()

    @abstractmethod
    def read(self, path: Path, data: bytes) -> list[TextBlock]:
        """The blocks of the file ``path`` whose content is ``data``."""
