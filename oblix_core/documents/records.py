"""What readers, chunkers, indexes and the library pass to each other."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs


@attrs.frozen
class TextBlock:
    """A piece of a document as a reader found it: a heading, paragraph, code definition or page.

    ``line`` is the first line (1-based) in the file, ``page`` the PDF page (1-based) or
    ``None``; ``headings`` the heading path above it (outermost first).
    """

    text: str
    line: int = 1
    page: int | None = None
    headings: tuple[str, ...] = ()
    kind: str = "paragraph"


@attrs.frozen
class Chunk:
    """A piece of a document that is embedded and searched, with where it came from."""

    doc_id: str
    chunk_idx: int
    text: str
    line_start: int = 1
    line_end: int = 1
    page: int | None = None
    headings: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.doc_id}:{self.chunk_idx}"

    def location(self) -> str:
        """Where a person finds it: ``page 3``, ``lines 10-24``, and the heading path."""
        where = (
            f"page {self.page}"
            if self.page
            else (
                f"line {self.line_start}"
                if self.line_start == self.line_end
                else f"lines {self.line_start}-{self.line_end}"
            )
        )
        return f"{where} ({' > '.join(self.headings)})" if self.headings else where


@attrs.frozen
class DocumentEntry:
    """A document of a workspace, as an index lists it."""

    id: str
    workspace_id: str
    name: str
    #: The file it was read from, relative to its connector's root ("" for an upload's own name).
    path: str = ""
    content_hash: str = ""
    #: The embedder whose vectors its chunks carry ("" while not embedded).
    embedder: str = ""
    chunk_count: int = 0
    size: int = 0
    added_at: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class SearchHit:
    """A chunk found by a search, with its score (higher is better) and its document's name."""

    chunk: Chunk
    score: float
    doc_name: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """0.1.3's result shape (``id``, ``score``, ``text``, ``doc_id``, ``doc_name``, ``chunk_idx``)
        plus where the chunk is."""
        c = self.chunk
        return {
            "id": c.id,
            "score": round(self.score, 6),
            "text": c.text,
            "doc_id": c.doc_id,
            "doc_name": self.doc_name,
            "chunk_idx": c.chunk_idx,
            "location": c.location(),
            "line_start": c.line_start,
            "line_end": c.line_end,
            "page": c.page,
            "headings": list(c.headings),
        }


def content_hash(data: bytes) -> str:
    """The hash that tells whether a file changed since it was embedded."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def document_id(workspace_id: str, key: str) -> str:
    """A stable id for the document ``key`` (a connector's file, or an upload) of a workspace."""
    return "doc_" + hashlib.sha256(f"{workspace_id}\0{key}".encode()).hexdigest()[:20]


@attrs.frozen
class Connector:
    """A registered source of documents (0.1.3's ``register_connector``): a directory or one file."""

    id: str
    type: str
    path: str
    alias: str = ""
    exclude_patterns: tuple[str, ...] = ()
    recursive: bool = True
    private: bool = False

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"exclude_patterns": list(self.exclude_patterns)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Connector:
        return cls(**{**raw, "exclude_patterns": tuple(raw.get("exclude_patterns", ()))})


@attrs.frozen
class Workspace:
    """A named set of documents searched together, embedded by one embedder.

    ``private`` workspaces are embedded only by local embedders and make every request
    that draws on them local-only.
    """

    id: str
    name: str
    description: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    private: bool = False
    #: The embedder of every vector in it, and their dimension ("" / 0 until the first one).
    embedder: str = ""
    dimension: int = 0
    created_at: str = ""
    connectors: tuple[Connector, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {"connectors": [c.to_dict() for c in self.connectors]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Workspace:
        connectors = tuple(Connector.from_dict(c) for c in raw.get("connectors", ()))
        return cls(**{**raw, "connectors": connectors})
