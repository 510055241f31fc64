"""Ingest and sync: read, chunk, embed and store documents, embedding only what changed.

A file is read whole (one at a time: memory follows the largest file, not the tree),
hashed, and skipped when its hash and embedder match what the index holds. Otherwise it
is chunked, embedded in batches and written with :meth:`DocumentIndex.put_document`,
which replaces the document's chunks as one unit: a sync killed at any point and run
again ends with the same index as one that was never interrupted. Files gone from a
connector's directory are deleted from the index at the end of a sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from oblix_core.documents.chunking import DEFAULT_BUDGET, DEFAULT_OVERLAP, chunk_blocks, count_tokens
from oblix_core.documents.errors import DocumentError, EmbedderError, UnreadableDocumentError
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder, Vector
from oblix_core.documents.records import (
    Chunk,
    Connector,
    DocumentEntry,
    TextBlock,
    Workspace,
    content_hash,
    document_id,
)
from oblix_core.documents.walking import Skipped, walk
from oblix_core.secrets import scrub
from oblix_core.sessions.records import utc_now

#: Files larger than this are skipped (reported), not read.
MAX_FILE_BYTES = 50 * 1024 * 1024
#: Called after each file: (what happened, the file's path, its chunk count).
Progress = Callable[[str, str, int], None]


@attrs.define
class SyncReport:
    """What a sync or an upload did."""

    added: list[str] = attrs.field(factory=list)
    updated: list[str] = attrs.field(factory=list)
    unchanged: list[str] = attrs.field(factory=list)
    deleted: list[str] = attrs.field(factory=list)
    skipped: list[Skipped] = attrs.field(factory=list)
    chunks: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        processed = len(self.added) + len(self.updated) + len(self.unchanged)
        return {
            "total_files": processed + len(self.skipped),  # 0.1.3's two counts
            "processed_files": processed,
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "deleted": len(self.deleted),
            "skipped": [attrs.asdict(s) for s in self.skipped],
            "chunks_embedded": self.chunks,
            "tokens_embedded": self.tokens,
        }


def embedding_text(chunk: Chunk, doc_name: str) -> str:
    """What is embedded for a chunk: its document's name and heading path, then its text."""
    head = " > ".join((doc_name, *chunk.headings))
    return f"{head}\n{chunk.text}"


def read_blocks(path: Path, data: bytes, readers: Mapping[str, DocumentReader]) -> list[TextBlock]:
    """The blocks of a file, by the reader of its suffix (plain text for unknown text files)."""
    suffix = path.suffix.lower()
    reader = readers.get(suffix)
    if reader is None:
        if b"\0" in data[:8192]:
            raise UnreadableDocumentError(
                f"{path.name}: a binary file of a type no reader reads ({suffix or 'no suffix'})."
            )
        reader = readers.get(".txt")
        if reader is None:
            raise UnreadableDocumentError(
                f"{path.name}: no document reader is installed: pip install 'oblix[docs]'."
            )
    try:
        return reader.read(path, data)
    except DocumentError:
        raise
    except Exception as exc:  # a reader (a plugin's too) that fails on one file fails that file only
        raise UnreadableDocumentError(
            f"{path.name}: the {reader.name or 'document'} reader failed ({type(exc).__name__}: {exc})."
        ) from exc


def embed_chunks(embedder: Embedder, chunks: Sequence[Chunk], doc_name: str, batch_size: int) -> list[Vector]:
    """One vector per chunk, embedded ``batch_size`` at a time; an embedder failure is an EmbedderError."""
    vectors: list[Vector] = []
    for start in range(0, len(chunks), batch_size):
        batch = [embedding_text(c, doc_name) for c in chunks[start : start + batch_size]]
        try:
            got = list(embedder.embed(batch))
        except EmbedderError:
            raise
        except Exception as exc:
            raise EmbedderError(f"The embedder {embedder.name} failed: {scrub(str(exc))}") from exc
        if len(got) != len(batch) or any(len(v) != embedder.dimension for v in got):
            raise EmbedderError(
                f"The embedder {embedder.name} answered {len(got)} vectors for {len(batch)} texts, or "
                f"vectors of another dimension than {embedder.dimension}; nothing of this document was "
                "written."
            )
        vectors.extend(got)
    return vectors


@attrs.define
class Ingest:
    """Writes documents of one workspace: ``index`` keeps them, ``embedder`` (or none) embeds them."""

    index: DocumentIndex
    workspace: Workspace
    embedder: Embedder | None
    readers: Mapping[str, DocumentReader]
    batch_size: int = 100
    budget: int = DEFAULT_BUDGET
    overlap: int = DEFAULT_OVERLAP
    progress: Progress | None = None

    def file(
        self, path: Path, doc_id: str, name: str, rel: str, metadata: dict[str, Any], report: SyncReport
    ) -> None:
        """Ingest one file as document ``doc_id`` unless it is unchanged; count it in ``report``."""
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UnreadableDocumentError(f"{rel}: larger than {MAX_FILE_BYTES // 2**20} MB, not read.")
        data = path.read_bytes()
        digest = content_hash(data)
        old = self.index.get_document(self.workspace.id, doc_id)
        embedder_name = self.embedder.name if self.embedder is not None else ""
        if (
            old is not None
            and old.content_hash == digest
            and old.embedder == embedder_name
            and old.metadata == metadata
        ):
            report.unchanged.append(rel)
            self._tell("unchanged", rel, old.chunk_count)
            return
        blocks = read_blocks(path, data, self.readers)
        entry = DocumentEntry(
            id=doc_id,
            workspace_id=self.workspace.id,
            name=name,
            path=rel,
            content_hash=digest,
            embedder=embedder_name,
            size=size,
            added_at=utc_now(),
            metadata=metadata,
        )
        self.write(entry, blocks, report)
        (report.updated if old is not None else report.added).append(rel)

    def write(self, entry: DocumentEntry, blocks: Sequence[TextBlock], report: SyncReport) -> DocumentEntry:
        """Chunk, embed and store one document as a unit."""
        chunks = chunk_blocks(entry.id, blocks, self.budget, self.overlap)
        vectors = (  # a document without text (an empty file) has no chunk and so no vector
            embed_chunks(self.embedder, chunks, entry.name, self.batch_size)
            if self.embedder is not None and chunks
            else None
        )
        entry = attrs.evolve(entry, chunk_count=len(chunks))
        self.index.put_document(entry, chunks, vectors)
        if vectors is not None:
            report.chunks += len(chunks)
            report.tokens += sum(count_tokens(c.text) for c in chunks)
        self._tell("embedded" if vectors is not None else "stored", entry.path or entry.name, len(chunks))
        return entry

    def document(self, connector: Connector, report: SyncReport) -> None:
        """Sync a document connector: its file embedded if changed; gone or unreadable, its
        document is deleted and the file reported in ``report.skipped``."""
        path = Path(connector.path)
        rel = path.name
        doc_id = document_id(self.workspace.id, f"{connector.id}/{rel}")
        try:
            if _moved_root(path) is not None:
                raise UnreadableDocumentError(f"{rel}: now a symlink to {path.resolve()} (refused)")
            if path.exists() and not path.is_file():
                raise UnreadableDocumentError(f"{rel}: no longer a regular file (not read)")
            self.file(path, doc_id, rel, rel, {"connector_id": connector.id}, report)
        except (UnreadableDocumentError, OSError) as exc:
            report.skipped.append(Skipped(rel, getattr(exc, "strerror", None) or str(exc)))
            self._tell("skipped", rel, 0)
            if self.index.delete_document(self.workspace.id, doc_id):
                report.deleted.append(rel)

    def directory(self, connector: Connector, report: SyncReport) -> None:
        """Sync a directory connector: changed files embedded, new ones added, vanished ones deleted.

        A registered folder that is gone (an unmounted drive?) or now a symlink elsewhere is
        reported in ``report.skipped`` and its documents are kept."""
        root = Path(connector.path)
        refusal = "gone (its documents are kept)" if not root.is_dir() else _moved_root(root)
        if refusal is not None:
            report.skipped.append(Skipped(connector.path, f"the registered folder is {refusal}"))
            self._tell("skipped", connector.path, 0)
            return
        seen: set[str] = set()
        for found in walk(root, connector.exclude_patterns, connector.recursive):
            if isinstance(found, Skipped):
                report.skipped.append(found)
                continue
            path, rel = found
            doc_id = document_id(self.workspace.id, f"{connector.id}/{rel}")
            seen.add(doc_id)
            try:
                self.file(path, doc_id, rel, rel, {"connector_id": connector.id}, report)
            except (UnreadableDocumentError, OSError) as exc:
                seen.discard(
                    doc_id
                )  # an unreadable file's old chunks go too: they no longer say what it says
                report.skipped.append(Skipped(rel, getattr(exc, "strerror", None) or str(exc)))
                self._tell("skipped", rel, 0)
        for doc in self.index.list_documents(self.workspace.id, {"connector_id": connector.id}):
            if doc.id not in seen:
                self.index.delete_document(self.workspace.id, doc.id)
                report.deleted.append(doc.path)
                self._tell("deleted", doc.path, 0)

    def _tell(self, event: str, path: str, chunks: int) -> None:
        if self.progress is not None:
            self.progress(event, path, chunks)


def _moved_root(path: Path) -> str | None:
    """Why a connector's path (stored resolved) is refused now: it became a symlink elsewhere."""
    target = path.resolve()
    return None if target == path else f"now a symlink to {target} (refused; register that path instead)"
