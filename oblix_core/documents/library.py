"""Workspaces, connectors, uploads and search over one document index.

:class:`Library` is what the client's document methods (0.1.3's names) and ``oblix docs``
call. It decides which embedder a workspace uses (a private workspace only a local one),
refuses to mix two embedders in one workspace, and searches keyword, vector or both
(fused by reciprocal rank). Its methods block; the client runs them in a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from oblix_core.documents.errors import (
    DocumentError,
    DocumentNotFoundError,
    EmbedderMismatchError,
    UnreadableDocumentError,
    WorkspaceNotFoundError,
)
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder
from oblix_core.documents.ranking import reciprocal_rank_fusion
from oblix_core.documents.records import (
    Connector,
    DocumentEntry,
    SearchHit,
    TextBlock,
    Workspace,
    document_id,
)
from oblix_core.documents.sync import Ingest, Progress, SyncReport, read_blocks
from oblix_core.sessions.records import random_hex, utc_now
from oblix_core.validation import check_json_dict, check_text

#: Search modes: words, meaning, or both fused.
MODES = ("hybrid", "keyword", "vector")
#: How many results each list brings to the fusion, per result wanted.
FUSION_DEPTH = 4
_NAME = re.compile(r"^[\w .@:+-]{1,100}$")
#: Appended to a workspace's embedder name while :meth:`Library.set_embedder` re-embeds it (and
#: left there by a re-embed that was killed: its vectors are of two embedders until it is finished).
REEMBEDDING = " (re-embedding)"


def reembedding_target(workspace: Workspace) -> str | None:
    """The embedder a workspace is being (or was, when interrupted) re-embedded with, else ``None``."""
    name = workspace.embedder or ""
    return name[: -len(REEMBEDDING)] if name.endswith(REEMBEDDING) else None


def check_where(where: Any) -> dict[str, Any] | None:
    if where is not None and not isinstance(where, dict):
        raise DocumentError(f"where must be a dict of metadata to match, got {type(where).__name__}.")
    return where


def _blocks(index: DocumentIndex, workspace_id: str, doc_id: str) -> list[TextBlock]:
    """A stored document's chunks as blocks again (to embed them without the file)."""
    return [
        TextBlock(c.text, c.line_start, c.page, c.headings)
        for c in index.document_chunks(workspace_id, doc_id)
    ]


def check_query(query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise DocumentError("The search query is empty; pass the words or question to search for.")
    return check_text(query, "The search query", DocumentError)


def check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
        raise DocumentError(f"top_k must be an integer from 1 to 1000, got {top_k!r}.")
    return top_k


@attrs.define
class Library:
    """The documents of one index, with the embedders and readers the plugins registered.

    ``embedder_for(spec)`` builds an embedder from a name such as ``"local"`` or
    ``"openai:text-embedding-3-small"`` (``None``: the default); ``readers`` maps a
    suffix to its reader.
    """

    index: DocumentIndex
    embedder_for: Callable[[str | None], Embedder]
    readers: Mapping[str, DocumentReader]
    _embedders: dict[str, Embedder] = attrs.field(factory=dict)

    # -- workspaces ----------------------------------------------------------------------

    def create_workspace(
        self,
        name: str,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        *,
        private: bool = False,
        embedder: str | None = None,
    ) -> Workspace:
        """A new workspace; ``embedder`` names the embedder of all its vectors (default: the local one)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise DocumentError(
                f"Invalid workspace name {name!r}: use 1-100 letters, digits, spaces or . _ - @ : +."
            )
        if not isinstance(description, str | None):
            raise DocumentError(f"description must be a string, got {type(description).__name__}.")
        metadata = check_json_dict(metadata, "The workspace metadata", DocumentError)
        if any(w.name == name for w in self.index.list_workspaces()):
            raise DocumentError(f"A workspace named {name!r} exists already; pick another name or use it.")
        chosen = self.embedder(embedder, private=private)
        workspace = Workspace(
            id=f"ws_{random_hex()[:16]}",
            name=name,
            description=description or "",
            metadata=dict(metadata or {}),
            private=private,
            embedder=chosen.name,
            dimension=chosen.dimension,
            created_at=utc_now(),
        )
        self.index.put_workspace(workspace)
        return workspace

    def workspace(self, ref: str) -> Workspace:
        """The workspace whose id or name is ``ref``."""
        if not isinstance(ref, str) or not ref:
            raise WorkspaceNotFoundError("Pass a workspace id or name.")
        found = self.index.get_workspace(ref)
        if found is None:
            found = next((w for w in self.index.list_workspaces() if w.name == ref), None)
        if found is None:
            names = ", ".join(w.name for w in self.index.list_workspaces()) or "none"
            raise WorkspaceNotFoundError(
                f"No workspace {ref!r} (workspaces: {names}). Create it: create_workspace(name) in the "
                "SDK, oblix docs add PATH -w NAME on the command line."
            )
        return found

    def delete_workspace(self, ref: str) -> bool:
        return self.index.delete_workspace(self.workspace(ref).id)

    def embedder(self, spec: str | None, *, private: bool = False) -> Embedder:
        """The embedder named ``spec`` (built once); a private workspace may use only local ones."""
        key = spec or ""
        if key not in self._embedders:
            built = self.embedder_for(spec)
            self._embedders[key] = self._embedders.setdefault(built.name, built)  # also found by its name
        chosen = self._embedders[key]
        if private and not chosen.is_local:
            raise DocumentError(
                f"The embedder {chosen.name} sends text off this machine; a private workspace is "
                "embedded only by a local embedder (the default, 'local')."
            )
        return chosen

    def workspace_embedder(self, workspace: Workspace) -> Embedder:
        """The embedder of ``workspace``'s vectors."""
        self._check_not_reembedding(workspace)
        return self.embedder(workspace.embedder or None, private=workspace.private)

    @staticmethod
    def _check_not_reembedding(workspace: Workspace) -> None:
        target = reembedding_target(workspace)
        if target is not None:
            raise EmbedderMismatchError(
                f"Workspace {workspace.name!r} is being re-embedded with {target}, or a re-embed was "
                "interrupted: its vectors are of two embedders until it is done. Finish it with "
                f"client.update_workspace_embeddings({workspace.id!r})."
            )

    def set_embedder(
        self, workspace: Workspace, spec: str | None, progress: Progress | None = None
    ) -> SyncReport:
        """Re-embed every document of ``workspace`` with another embedder (0.1.3's
        ``update_workspace_embeddings``); each document is replaced as a unit. A re-embed that was
        interrupted is finished by calling it again (``spec=None``: with the embedder it had begun)."""
        if spec is not None and spec.endswith(REEMBEDDING):
            spec = spec[: -len(REEMBEDDING)]
        chosen = self.embedder(spec or reembedding_target(workspace), private=workspace.private)
        moved = attrs.evolve(workspace, embedder=chosen.name, dimension=chosen.dimension)
        report = SyncReport()
        ingest = Ingest(self.index, moved, chosen, self.readers, progress=progress)
        self.index.put_workspace(attrs.evolve(moved, embedder=f"{chosen.name}{REEMBEDDING}"))
        for doc in self.index.list_documents(workspace.id):
            blocks = _blocks(self.index, workspace.id, doc.id)
            ingest.write(attrs.evolve(doc, embedder=chosen.name), blocks, report)
        self.index.put_workspace(moved)
        return report

    def _check_embedder(self, workspace: Workspace, spec: str | None) -> Embedder:
        self._check_not_reembedding(workspace)
        chosen = self.embedder(spec or workspace.embedder or None, private=workspace.private)
        if workspace.embedder and chosen.name != workspace.embedder:
            raise EmbedderMismatchError(
                f"Workspace {workspace.name!r} holds vectors of {workspace.embedder}, not {chosen.name}; "
                "vectors of two embedders cannot be searched together. Re-embed it first: "
                f"client.update_workspace_embeddings({workspace.id!r}, {spec!r}) re-embeds every document "
                "with the new one."
            )
        return chosen

    # -- connectors and documents --------------------------------------------------------

    def add_connector(
        self,
        workspace: Workspace,
        connector_type: str,
        path: str | Path,
        *,
        alias: str | None = None,
        exclude_patterns: Sequence[str] | None = None,
        recursive: bool = True,
        private: bool = False,
    ) -> tuple[Workspace, Connector]:
        """Register a directory or one document under ``workspace`` (not synced yet)."""
        if connector_type not in ("directory", "document"):
            raise DocumentError(f"Unknown connector type {connector_type!r}: use 'directory' or 'document'.")
        root = Path(path).expanduser()
        if not root.exists():
            raise DocumentError(f"{root} does not exist; pass an existing {connector_type}.")
        if not (root.is_dir() if connector_type == "directory" else root.is_file()):
            # a "document" is a regular file: a FIFO or a device would block or never end
            raise DocumentError(f"{root} is not a {connector_type}.")
        patterns = tuple(exclude_patterns or ())
        if not all(isinstance(p, str) for p in patterns):
            raise DocumentError("exclude_patterns must be a list of glob patterns (strings).")
        same = next(
            (c for c in workspace.connectors if c.type == connector_type and c.path == str(root.resolve())),
            None,
        )
        connector = Connector(
            id=same.id if same is not None else f"conn_{random_hex()[:16]}",
            type=connector_type,
            path=str(root.resolve()),
            alias=alias or root.name,
            exclude_patterns=patterns,
            recursive=recursive,
            private=private,
        )
        # the same folder added again keeps its connector (and documents), with the new options
        others = tuple(c for c in workspace.connectors if c.id != connector.id)
        updated = attrs.evolve(workspace, connectors=(*others, connector))
        self.index.put_workspace(updated)
        return updated, connector

    def connectors(self) -> list[tuple[Workspace, Connector]]:
        return [(w, c) for w in self.index.list_workspaces() for c in w.connectors]

    def remove_connector(self, connector_id: str) -> bool:
        """Forget a connector and delete its documents from the index."""
        for workspace, connector in self.connectors():
            if connector.id == connector_id or connector.alias == connector_id:
                for doc in self.index.list_documents(workspace.id, {"connector_id": connector.id}):
                    self.index.delete_document(workspace.id, doc.id)
                rest = tuple(c for c in workspace.connectors if c.id != connector.id)
                self.index.put_workspace(attrs.evolve(workspace, connectors=rest))
                return True
        return False

    def sync(
        self,
        workspace: Workspace,
        connector: Connector,
        *,
        batch_size: int = 100,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Bring the index up to date with a connector's files (only changed files are embedded)."""
        embedder = self._check_embedder(workspace, None)
        ingest = Ingest(self.index, workspace, embedder, self.readers, batch_size, progress=progress)
        report = SyncReport()
        if connector.type == "directory":
            ingest.directory(connector, report)
        else:
            ingest.document(connector, report)
        return report

    def upload(
        self,
        workspace: Workspace,
        file_path: str | Path,
        *,
        name: str | None = None,
        embed: bool = True,
        metadata: dict[str, Any] | None = None,
        embedder: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[DocumentEntry, SyncReport]:
        """Add one file to ``workspace`` (``embed=False``: keyword search only until embedded)."""
        if not isinstance(file_path, str | Path) or not isinstance(name, str | None):
            raise DocumentError("file_path and name must be strings (name may be None).")
        metadata = check_json_dict(metadata, "The document metadata", DocumentError)
        if metadata and "connector_id" in metadata:  # the key a connector's sync keeps its own files by
            raise DocumentError(
                "connector_id is kept by Oblix for the documents of a connector (a sync would delete an "
                "upload that carried it): name your metadata key otherwise."
            )
        path = Path(file_path).expanduser()
        if not path.is_file():
            raise UnreadableDocumentError(f"{path} is not a readable file.")
        chosen = self._check_embedder(workspace, embedder) if embed else None
        doc_name = name or path.name
        # the same file uploaded again replaces its document; two files of one name are two
        source = str(path.resolve())
        doc_id = document_id(workspace.id, f"upload/{source}")
        ingest = Ingest(self.index, workspace, chosen, self.readers, progress=progress)
        report = SyncReport()
        ingest.file(path, doc_id, doc_name, doc_name, {"source": source, **(metadata or {})}, report)
        entry = self.index.get_document(workspace.id, doc_id)
        assert entry is not None
        return entry, report

    def embed_document(self, workspace: Workspace, doc_id: str) -> DocumentEntry:
        """Embed a document stored without vectors (0.1.3's ``upload_document(embed=False)``)."""
        doc = self.index.get_document(workspace.id, doc_id)
        if doc is None:
            raise DocumentNotFoundError(f"No document {doc_id!r} in workspace {workspace.name!r}.")
        chosen = self._check_embedder(workspace, None)
        blocks = _blocks(self.index, workspace.id, doc_id)
        return Ingest(self.index, workspace, chosen, self.readers).write(
            attrs.evolve(doc, embedder=chosen.name), blocks, SyncReport()
        )

    def copy_document(self, source: Workspace, doc: DocumentEntry, target: Workspace) -> DocumentEntry:
        """Put a copy of ``doc`` (from ``source``) in ``target``, embedded by ``target``'s embedder.
        A private workspace's document goes only into another private one."""
        if source.private and not target.private:
            raise DocumentError(
                f"{doc.name} is in the private workspace {source.name!r}; copying it into "
                f"{target.name!r}, which is not private, would let it reach cloud models. Copy it into "
                "a private workspace (create_workspace(name, private=True))."
            )
        blocks = _blocks(self.index, source.id, doc.id)
        chosen = self._check_embedder(target, None)
        copy = attrs.evolve(
            doc,
            id=document_id(target.id, f"copy/{source.id}/{doc.id}"),
            workspace_id=target.id,
            embedder=chosen.name,
        )
        return Ingest(self.index, target, chosen, self.readers).write(copy, blocks, SyncReport())

    def read(self, path: Path) -> int:
        """How many blocks a reader finds in ``path`` (a check that the file can be read)."""
        return len(read_blocks(path, path.read_bytes(), self.readers))

    # -- search --------------------------------------------------------------------------

    def search(
        self,
        workspace: Workspace,
        query: str,
        top_k: int = 10,
        *,
        mode: str = "hybrid",
        where: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        """The ``top_k`` best chunks of ``workspace`` for ``query``."""
        query, top_k, where = check_query(query), check_top_k(top_k), check_where(where)
        if mode not in MODES:
            raise DocumentError(f"Unknown search mode {mode!r}: use one of {', '.join(MODES)}.")
        depth = top_k * FUSION_DEPTH if mode == "hybrid" else top_k
        lists = []
        if mode in ("hybrid", "keyword"):
            lists.append(self.index.keyword_search(workspace.id, query, depth, where))
        if mode in ("hybrid", "vector"):
            vector = self.workspace_embedder(workspace).embed([query], query=True)[0]
            lists.append(self.index.vector_search(workspace.id, vector, depth, where))
        if len(lists) == 1:
            return lists[0][:top_k]
        return reciprocal_rank_fusion(lists, top_k)
