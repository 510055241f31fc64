"""Oblix 0.1.3's document names on the client, plus deleting documents, workspaces and connectors.

Mixed into :class:`~oblix_core.client.OblixClient` (so also ``Oblix``). Every method is a
coroutine that runs the blocking work (files, embedding, the index) in a worker thread.
The parts come from plugins: ``oblix[docs]`` gives the local embedder, the SQLite index
in the Oblix home and the readers; without it a document method says what to install.

Requests draw on documents through :meth:`DocumentsAPI._retrieval_for`: the workspace a
request names (``execute(..., workspace_id=W)``), else the workspaces of the connectors
registered on this client (as 0.1.3 does).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from oblix_core.documents.errors import (
    DocumentError,
    DocumentNotFoundError,
    DocumentsNotInstalledError,
    UnreadableDocumentError,
    WorkspaceNotFoundError,
)
from oblix_core.documents.library import Library, check_query
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder
from oblix_core.documents.records import DocumentEntry, Workspace
from oblix_core.documents.retrieval import DEFAULT_TOP_K, Retrieval, search_workspaces
from oblix_core.documents.settings import DocumentsSettings, index_arguments
from oblix_core.documents.sync import Progress, SyncReport
from oblix_core.documents.walking import Skipped, walk
from oblix_core.errors import OblixError
from oblix_core.secrets import remember
from oblix_core.sessions.records import session_is_local_only

if TYPE_CHECKING:
    from oblix_core.plugins.registry import Registry
    from oblix_core.sessions.store import SessionStore

T = TypeVar("T")
INSTALL = "pip install 'oblix[docs]'"
DEFAULT_WORKSPACE = "default"
#: Where uploads without a workspace go while the current session is local-only.
DEFAULT_PRIVATE_WORKSPACE = "default-private"


class DocumentsAPI:
    """Documents and workspaces (0.1.3's names). Needs ``self.home`` and ``self.registry``."""

    home: Path
    registry: Registry
    store: SessionStore
    _library: Library | None = None
    _connector_workspaces: list[str]
    _embedding_configs: dict[str, dict[str, Any]]
    _default_embedding: str | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _documents(self) -> Library:
        """The library over the index ``config.toml`` ``[documents]`` names (built on first use;
        :meth:`use_document_index` overrides it per client)."""
        with self.__dict__.setdefault("_documents_lock", threading.Lock()):  # one library per client
            if self._library is None:
                settings = self._documents_settings()
                self._index_factory(settings.index)  # not installed: say so before reading options
                where = str(getattr(getattr(self, "config", None), "path", None) or "config.toml")
                index = self._make_index(settings.index, **index_arguments(settings, where))
                self._library = Library(index, self._embedder_for, self._readers())
            return self._library

    def _documents_settings(self) -> DocumentsSettings:
        """``config.toml``'s ``[documents]`` table (the defaults for a client without a config)."""
        config = getattr(self, "config", None)
        return config.documents if config is not None else DocumentsSettings()

    def use_document_index(self, name: str, **options: Any) -> None:
        """Keep documents in the index ``name`` (``sqlite``, the default, or ``pgvector`` with ``dsn=``),
        instead of the one ``config.toml`` ``[documents]`` names, for this client."""
        old = self._library
        self._library = Library(self._make_index(name, **options), self._embedder_for, self._readers())
        if old is not None:
            old.index.close()

    def _index_factory(self, name: str) -> Callable[..., Any]:
        """The registered factory of the index ``name``; not installed: which extra to install."""
        factory = self.registry.document_indexes.get(name)
        if factory is None:
            extra = "docs" if name == "sqlite" else name
            hint = self.registry.pm.missing_hint(name) or f"No document index {name!r} is registered."
            raise DocumentsNotInstalledError(
                f"Documents need an index: {hint} Install it with pip install 'oblix[{extra}]'."
            )
        return factory

    def _make_index(self, name: str, **options: Any) -> DocumentIndex:
        factory = self._index_factory(name)
        if name == "sqlite":
            options.setdefault("path", self.home / "documents" / "index.sqlite3")
        index = self.registry.construct("Document index", name, factory, **options)
        if not isinstance(index, DocumentIndex):
            raise DocumentError(f"The document index {name!r} is not a DocumentIndex: {index!r}.")
        return index

    def _readers(self) -> dict[str, DocumentReader]:
        return self.registry.make_readers()  # a broken reader is left out, not every document

    def _embedder_for(self, spec: str | None) -> Embedder:
        """The embedder ``spec`` names (``local``, ``openai:text-embedding-3-small``), default if None."""
        spec = spec or self._default_embedding or self._documents_settings().embedder
        kind, _, model = spec.partition(":")
        configs = getattr(self, "_embedding_configs", {})
        options = dict(configs.get(spec) or configs.get(kind) or {})
        model = model or options.pop("model", None) or ""
        options.pop("model", None)
        if "@" in model:  # a stored name: "openai:MODEL@ENDPOINT"
            model, endpoint = model.split("@", 1)
            options.setdefault("endpoint", endpoint)
        factory = self.registry.embedders.get(kind)
        if factory is None:
            known = ", ".join(sorted(self.registry.embedders)) or "none"
            hint = self.registry.pm.missing_hint(kind) or ""
            raise DocumentsNotInstalledError(
                f"No embedder {kind!r} (registered: {known}). {hint} The local one comes with {INSTALL}."
            )
        embedder = self.registry.construct("Embedder", kind, factory, model or None, **options)
        if not isinstance(embedder, Embedder):
            raise DocumentError(f"The embedder {kind!r} is not an Embedder: {embedder!r}.")
        return embedder

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def _workspace_or_default(self, library: Library, ref: str | None) -> Workspace:
        """``ref``, else the ``default`` workspace, or ``default-private`` (a private one) while
        the current session is local-only: its uploads never join a shared workspace."""
        if ref:
            return library.workspace(ref)
        private = self._private_session(getattr(self, "current_session_id", None))
        name = DEFAULT_PRIVATE_WORKSPACE if private else DEFAULT_WORKSPACE
        found = [w for w in library.index.list_workspaces() if w.name == name]
        if found:
            return found[0]
        return library.create_workspace(
            name, private=private, embedder=self._private_spec(library, None, private)
        )

    @staticmethod
    def _private_spec(library: Library, spec: str | None, private: bool) -> str | None:
        """The embedder of a new workspace: ``spec``; for a private one named none, the default
        embedder if it is local, else ``local`` (a cloud default never embeds a private workspace)."""
        if not private or spec:
            return spec
        try:
            local = library.embedder(None).is_local
        except DocumentError:  # a default that cannot be built (no key...): it would not be used anyway
            local = False
        return None if local else "local"

    def _retrieval_for(
        self, workspace_id: Any, session_id: str | None = None, routing: dict[str, Any] | None = None
    ) -> Retrieval | None:
        """The retrieval of a request: ``workspace_id`` (one or a list), else this client's connectors.

        No I/O here: the workspaces are found and searched in the request's retrieval step. When
        the request is local-only (asked, its session is, or a workspace is private), a workspace
        embedded by a non-local embedder is searched by keywords only: the query never leaves.
        """
        refs = (
            workspace_id if isinstance(workspace_id, list | tuple) else [workspace_id] if workspace_id else []
        )
        if workspace_id == "" or not all(isinstance(ref, str) and ref.strip() for ref in refs):
            raise DocumentError("workspace_id must be a workspace id or name, or a list of them.")
        given = tuple(refs)  # as the caller gave them (what an idempotency key's request is compared on)
        refs = list(dict.fromkeys(refs or getattr(self, "_connector_workspaces", [])))
        if not refs:
            return None
        private = {"local": bool((routing or {}).get("local_only"))}
        session_id = session_id or getattr(self, "current_session_id", None)

        def resolve() -> tuple[Workspace, ...]:
            found = tuple(w for w in map(self._resolve_workspace(bool(given)), refs) if w is not None)
            private["local"] = (
                private["local"] or any(w.private for w in found) or self._private_session(session_id)
            )
            return found

        def search(workspaces: tuple[Workspace, ...], query: str, k: int) -> list[Any]:
            return search_workspaces(self._documents(), workspaces, query, k, local_only=private["local"])

        return Retrieval(resolve, search, DEFAULT_TOP_K, given)

    def _resolve_workspace(self, asked: bool) -> Callable[[str], Workspace | None]:
        """How a request finds a workspace: one it ``asked`` for must exist; one of this client's
        connectors deleted since (``oblix docs rm`` in another process) is left out and forgotten."""

        def find(ref: str) -> Workspace | None:
            try:
                return self._documents().workspace(ref)
            except WorkspaceNotFoundError:
                if asked:
                    raise
                if ref in self._connector_workspaces:
                    self._connector_workspaces.remove(ref)
                return None

        return find

    def _private_session(self, session_id: str | None) -> bool:
        if session_id is None:
            return False
        try:
            metadata = self.store.get_metadata(session_id)
        except OblixError:  # not stored yet (or unreadable): the request path decides and reports
            return False
        return session_is_local_only(metadata)

    # -- embedding models ------------------------------------------------------------------

    async def configure_embedding_model(
        self, type_name: str, model_name: str, **kwargs: Any
    ) -> dict[str, Any]:
        """Remember options for an embedder (``api_key``, ``endpoint``...); returns its config."""
        if not isinstance(type_name, str) or not type_name or not isinstance(model_name, str):
            raise DocumentError("configure_embedding_model needs a type name and a model name (strings).")
        remember(kwargs.get("api_key"))
        configs = self.__dict__.setdefault("_embedding_configs", {})
        configs[f"{type_name}:{model_name}"] = {"model": model_name, **kwargs}
        return {"type": type_name, "model": model_name, "name": f"{type_name}:{model_name}"}

    def set_default_embedding_model(self, config: dict[str, Any] | str) -> None:
        """Use ``config`` (from :meth:`configure_embedding_model`, or ``"type:model"``) for new
        workspaces. Not a coroutine, as in 0.1.3; fails now if the embedder cannot be built."""
        name = _embedding_name(config)
        if name is None:
            raise DocumentError(
                "set_default_embedding_model takes what configure_embedding_model returned, or a "
                f'name such as "local" or "openai:text-embedding-3-small"; got {config!r}.'
            )
        self._embedder_for(name).close()  # built only to check it (a local model loads on first use)
        self._default_embedding = name
        if self._library is not None:  # the library keeps the default it built under "" (no spec)
            self._library._embedders.pop("", None)

    async def embed_texts(
        self, texts: list[str], embedding_model: str | None = None, *, query: bool = False
    ) -> tuple[str, list[list[float]]]:
        """Embed ``texts`` with an embedder (default: the local one); returns its name and the vectors."""
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DocumentError("Pass a non-empty list of strings to embed.")
        library = await self._run(self._documents)  # opening the index is file I/O

        def embed() -> tuple[str, list[list[float]]]:
            embedder = library.embedder(embedding_model)
            return embedder.name, [list(map(float, v)) for v in embedder.embed(texts, query=query)]

        return await self._run(embed)

    def _embedding_spec(self, model: str | None, api_key: str | None) -> str | None:
        if api_key:
            remember(api_key)
            kind = (model or "openai").partition(":")[0]
            configs = self.__dict__.setdefault("_embedding_configs", {})
            configs.setdefault(model or kind, {}).update(api_key=api_key)
        return model

    # -- workspaces ------------------------------------------------------------------------

    async def create_workspace(
        self,
        name: str,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        *,
        private: bool = False,
        embedding_model: str | None = None,
    ) -> str:
        """Create a workspace and return its id; ``private=True`` keeps it and its requests local."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def create() -> Workspace:
            spec = self._private_spec(library, embedding_model, private)
            return library.create_workspace(name, description, metadata, private=private, embedder=spec)

        return (await self._run(create)).id

    async def list_workspaces(self) -> list[dict[str, Any]]:
        """Every workspace with its embedder, connectors and size (documents, chunks, bytes)."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def listing() -> list[dict[str, Any]]:
            found = [w.to_dict() | library.index.stats(w.id) for w in library.index.list_workspaces()]
            return [w | {"document_count": w["documents"]} for w in found]  # 0.1.3's name too

        return await self._run(listing)

    async def delete_workspace(self, workspace_id: str) -> bool:
        """Delete a workspace, its documents and its connectors."""
        library = await self._run(self._documents)  # opening the index is file I/O
        workspace = await self._run(library.workspace, workspace_id)
        if workspace.id in getattr(self, "_connector_workspaces", []):
            self._connector_workspaces.remove(workspace.id)
        return await self._run(library.delete_workspace, workspace.id)

    async def get_documents_in_workspace(self, workspace_id: str) -> list[dict[str, Any]]:
        library = await self._run(self._documents)  # opening the index is file I/O

        def listing() -> list[dict[str, Any]]:
            workspace = library.workspace(workspace_id)
            return [  # 0.1.3's embedding_status too
                d.to_dict() | {"embedding_status": "complete" if d.embedder else "pending"}
                for d in library.index.list_documents(workspace.id)
            ]

        return await self._run(listing)

    async def update_workspace_embeddings(
        self, workspace_id: str, embedding_config: dict[str, Any] | str | None = None
    ) -> bool:
        """Re-embed every document of a workspace, with another embedder if ``embedding_config``
        names one; ``True`` once every document is re-embedded (as 0.1.3; failures raise)."""
        spec = _embedding_name(embedding_config) if embedding_config is not None else None
        if embedding_config is not None and spec is None:
            raise DocumentError(
                "embedding_config must be what configure_embedding_model returned, or a name such as "
                f'"local" or "openai:text-embedding-3-small"; got {embedding_config!r}.'
            )
        library = await self._run(self._documents)  # opening the index is file I/O

        def reembed() -> bool:
            workspace = library.workspace(workspace_id)
            library.set_embedder(workspace, spec or workspace.embedder or None)
            return True

        return await self._run(reembed)

    # -- connectors ------------------------------------------------------------------------

    async def register_connector(
        self,
        connector_type: str,
        path: str,
        embedding_model: str | None = None,
        embedding_api_key: str | None = None,
        alias: str | None = None,
        exclude_patterns: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Register a ``"directory"`` or ``"document"`` and sync it; requests then draw on it.

        kwargs: ``recursive`` (True), ``workspace_id`` (else a new workspace named after it),
        ``batch_size`` (100), ``private`` (False), ``progress`` (a callback).
        """
        unknown = set(kwargs) - {"recursive", "workspace_id", "batch_size", "private", "progress"}
        if unknown:
            raise DocumentError(f"Unknown register_connector option(s): {', '.join(sorted(unknown))}.")
        _check_connector_arguments(path, exclude_patterns, kwargs.get("batch_size", 100))
        spec = self._embedding_spec(embedding_model, embedding_api_key)
        library = await self._run(self._documents)  # opening the index is file I/O
        # a connector registered while the current session is local-only is private too
        session = getattr(self, "current_session_id", None)

        def register() -> dict[str, Any]:
            private = bool(kwargs.get("private", False)) or self._private_session(session)
            workspace = self._connector_workspace(
                library, kwargs.get("workspace_id"), alias, (connector_type, path), private, spec
            )
            workspace, connector = library.add_connector(
                workspace,
                connector_type,
                path,
                alias=alias,
                exclude_patterns=exclude_patterns,
                recursive=bool(kwargs.get("recursive", True)),
                private=private,
            )
            report = library.sync(
                workspace,
                connector,
                batch_size=int(kwargs.get("batch_size", 100)),
                progress=kwargs.get("progress"),
            )
            return {
                "connector_id": connector.id,
                "workspace_id": workspace.id,
                "success": True,
                "alias": connector.alias,
                "type": connector_type,
                "path": path,
                "stats": report.to_dict() | library.index.stats(workspace.id),
                "error": None,
            }

        result = await self._run(register)
        workspaces = self.__dict__.setdefault("_connector_workspaces", [])
        if result["workspace_id"] not in workspaces:
            workspaces.append(result["workspace_id"])
        return result

    def _connector_workspace(
        self,
        library: Library,
        ref: str | None,
        alias: str | None,
        source: tuple[str, str],
        private: bool,
        spec: str | None,
    ) -> Workspace:
        """The workspace a connector goes in: ``ref``; else the one this path was registered in
        before (a script run again syncs it, as 0.1.3 scripts register on every run); else a new
        one named after it."""
        connector_type, path = source
        if not ref:
            ref = _registered_before(library, connector_type, path, alias, private)
        if ref:
            workspace = library.workspace(ref)
            if private and not workspace.private:
                raise DocumentError(
                    f"Workspace {workspace.name!r} is not private: a private connector goes in a private "
                    "workspace (create_workspace(name, private=True)), or leave out private=True."
                )
            if spec:  # another embedder than the workspace's: refused, never silently ignored
                library._check_embedder(workspace, spec)
            return workspace
        name = alias or Path(path).expanduser().resolve().name or "documents"
        taken = {w.name for w in library.index.list_workspaces()}
        name = next(n for n in (name, *(f"{name}-{i}" for i in range(2, 1000))) if n not in taken)
        return library.create_workspace(
            name, private=private, embedder=self._private_spec(library, spec, private)
        )

    async def sync_connectors(
        self, connector_id: str | None = None, *, progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        """Sync one connector, or all: only files whose content changed are embedded again."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def sync() -> list[dict[str, Any]]:
            done = []
            for workspace, connector in library.connectors():
                if connector_id in (None, connector.id, connector.alias):
                    fresh = library.workspace(workspace.id)
                    report = library.sync(fresh, connector, progress=progress)
                    done.append(
                        {"connector_id": connector.id, "workspace_id": workspace.id} | report.to_dict()
                    )
            if connector_id is not None and not done:
                raise DocumentError(f"No connector {connector_id!r}; list_connectors() shows them.")
            return done

        return await self._run(sync)

    async def list_connectors(self) -> list[dict[str, Any]]:
        library = await self._run(self._documents)  # opening the index is file I/O
        pairs = await self._run(library.connectors)
        return [c.to_dict() | {"workspace_id": w.id, "workspace": w.name} for w, c in pairs]

    async def delete_connector(self, connector_id: str) -> bool:
        """Forget a connector and delete its documents from the index (the files are untouched)."""
        library = await self._run(self._documents)  # opening the index is file I/O
        return await self._run(library.remove_connector, connector_id)

    # -- documents -------------------------------------------------------------------------

    async def upload_document(
        self,
        file_path: str,
        name: str | None = None,
        workspace_id: str | None = None,
        embed: bool = False,
        metadata: dict[str, Any] | None = None,
        embedding_model_type: str | None = None,
    ) -> str | dict[str, Any]:
        """Add one file to a workspace (the ``default`` one if none is given); ``embed=False``
        stores it for keyword search until :meth:`embed_document` embeds it.

        As in 0.1.3: without ``workspace_id`` and ``embed`` the document's id is returned, else
        a dict (``doc_id``, ``success``, ``upload_success``, ``workspace_success``,
        ``embedding_success``, ``error`` and the details). Failures raise.
        """
        library = await self._run(self._documents)  # opening the index is file I/O

        def upload() -> dict[str, Any]:
            workspace = self._workspace_or_default(library, workspace_id)
            entry, report = library.upload(
                workspace, file_path, name=name, embed=embed, metadata=metadata, embedder=embedding_model_type
            )
            return _uploaded(entry, workspace.id, embed) | {"stats": report.to_dict()}

        result = await self._run(upload)
        return result["doc_id"] if workspace_id is None and not embed else result

    async def upload_directory(
        self,
        directory_path: str,
        workspace_id: str | None = None,
        embedding_model_type: str | None = None,
        recursive: bool = True,
        metadata: dict[str, Any] | None = None,
        batch_size: int = 100,
    ) -> dict[str, Any]:
        """Add every readable file of a directory (embedded); unreadable ones are reported in ``skipped``."""
        library = await self._run(self._documents)  # opening the index is file I/O
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DocumentError(f"batch_size must be a positive integer, got {batch_size!r}.")

        def upload() -> dict[str, Any]:
            workspace = self._workspace_or_default(library, workspace_id)
            root = Path(directory_path).expanduser()
            if not root.is_dir():
                raise DocumentError(f"{root} is not a directory.")
            total, documents = SyncReport(), []
            for found in walk(root, (), recursive):
                if isinstance(found, Skipped):
                    total.skipped.append(found)
                    continue
                path, rel = found
                try:
                    entry, report = library.upload(
                        workspace, path, name=rel, metadata=metadata, embedder=embedding_model_type
                    )
                except (UnreadableDocumentError, OSError) as exc:
                    total.skipped.append(Skipped(rel, str(exc)))
                    documents.append({"file_path": str(path), "success": False, "error": str(exc)})
                    continue
                documents.append(_uploaded(entry, workspace.id, True) | {"file_path": str(path)})
                total.added += report.added
                total.updated += report.updated
                total.unchanged += report.unchanged
                total.chunks += report.chunks
                total.tokens += report.tokens
            stats = total.to_dict()
            return {  # 0.1.3's keys, plus document_ids and stats
                "success": True,
                "workspace_id": workspace.id,
                "total_files": stats["total_files"],
                "processed_files": stats["processed_files"],
                "documents": documents,
                "document_ids": [d["doc_id"] for d in documents if d["success"]],
                "stats": stats,
                "error": None,
            }

        return await self._run(upload)

    async def add_document_to_workspace(self, doc_id: str, workspace_id: str) -> bool:
        """Copy a document (text and positions) into another workspace, embedded by its embedder."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def add() -> bool:
            target = library.workspace(workspace_id)
            for workspace in library.index.list_workspaces():
                doc = library.index.get_document(workspace.id, doc_id)
                if doc is not None:
                    library.copy_document(workspace, doc, target)
                    return True
            raise DocumentNotFoundError(f"No document {doc_id!r} in any workspace.")

        return await self._run(add)

    async def embed_document(self, doc_id: str, workspace_id: str | None = None) -> bool:
        """Embed a document uploaded with ``embed=False``; ``True`` once embedded (failures raise)."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def embed() -> bool:
            workspace = self._find_document_workspace(library, doc_id, workspace_id)
            library.embed_document(workspace, doc_id)
            return True

        return await self._run(embed)

    async def delete_document(self, doc_id: str, workspace_id: str | None = None) -> bool:
        """Delete a document and its chunks from the index (the file is untouched)."""
        library = await self._run(self._documents)  # opening the index is file I/O

        def delete() -> bool:
            workspace = self._find_document_workspace(library, doc_id, workspace_id)
            return library.index.delete_document(workspace.id, doc_id)

        return await self._run(delete)

    def _find_document_workspace(
        self, library: Library, document_id: str, workspace_id: str | None
    ) -> Workspace:
        candidates = [library.workspace(workspace_id)] if workspace_id else library.index.list_workspaces()
        for workspace in candidates:
            if library.index.get_document(workspace.id, document_id) is not None:
                return workspace
        raise DocumentNotFoundError(f"No document {document_id!r}; get_documents_in_workspace lists them.")

    # -- search ----------------------------------------------------------------------------

    async def search_workspace(
        self,
        workspace_id: str,
        query: str,
        top_k: int = 10,
        *,
        mode: str = "hybrid",
        where: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best chunks for ``query`` (keywords and meaning fused; ``mode`` picks one)."""
        check_query(query)
        library = await self._run(self._documents)  # opening the index is file I/O

        def search() -> list[dict[str, Any]]:
            workspace = library.workspace(workspace_id)
            return [h.to_dict() for h in library.search(workspace, query, top_k, mode=mode, where=where)]

        return await self._run(search)

    async def vector_search(
        self, query: str, workspace_id: str, embedding_model_type: str | None = None, top_k: int = 5
    ) -> list[dict[str, Any]]:
        """The ``top_k`` chunks nearest in meaning to ``query``."""
        check_query(query)
        library = await self._run(self._documents)  # opening the index is file I/O

        def search() -> list[dict[str, Any]]:
            workspace = library.workspace(workspace_id)
            if embedding_model_type:
                library._check_embedder(workspace, embedding_model_type)
            return [h.to_dict() for h in library.search(workspace, query, top_k, mode="vector")]

        return await self._run(search)


def _registered_before(
    library: Library, connector_type: str, path: str, alias: str | None, private: bool
) -> str | None:
    """The workspace where ``path`` is registered already (same type, and ``alias`` if given,
    as the connector's alias or the workspace's name); for a private connector, a private one."""
    resolved = str(Path(path).expanduser().resolve())
    for workspace, connector in library.connectors():
        if (
            connector.type == connector_type
            and connector.path == resolved
            and alias in (None, connector.alias, workspace.name)
            and (workspace.private or not private)
        ):
            return workspace.id
    return None


def _embedding_name(config: Any) -> str | None:
    """The embedder name of ``config`` (a name, or what configure_embedding_model returned), else None."""
    if isinstance(config, str):
        return config if config.strip() else None
    if not isinstance(config, dict):
        return None
    name = config.get("name")
    if isinstance(name, str) and name.strip():
        return name
    if "type" not in config and "model" not in config:
        return None
    kind, model = config.get("type", "local"), config.get("model")
    if not isinstance(kind, str) or not kind or not isinstance(model, str | None):
        return None
    return f"{kind}:{model}" if model else kind


def _check_connector_arguments(path: Any, exclude_patterns: Any, batch_size: Any) -> None:
    """register_connector's arguments, checked before anything is written."""
    if not isinstance(path, str | Path) or not str(path).strip():
        raise DocumentError(f"path must be the path of a directory or a file, got {path!r}.")
    if exclude_patterns is not None and (
        not isinstance(exclude_patterns, list | tuple)
        or not all(isinstance(p, str) for p in exclude_patterns)
    ):
        raise DocumentError(
            f"exclude_patterns must be a list of glob patterns (strings), got {exclude_patterns!r}; "
            'e.g. ["*.log", "build/"].'
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DocumentError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _uploaded(entry: DocumentEntry, workspace_id: str, embed: bool) -> dict[str, Any]:
    """An uploaded document as 0.1.3 reported it (with ``document_id``, ``name``, ``chunks``...)."""
    return {
        "doc_id": entry.id,
        "document_id": entry.id,
        "success": True,
        "upload_success": True,
        "workspace_success": True,
        "embedding_success": bool(entry.embedder) if embed else None,
        "error": None,
        "name": entry.name,
        "workspace_id": workspace_id,
        "chunks": entry.chunk_count,
        "embedded": bool(entry.embedder),
    }
