"""The retrieval step of a request: search the workspaces it draws on, once, before routing.

The client builds a :class:`Retrieval` for a request that draws on documents (its
``workspace_id=``, or the registered connectors); the conversation calls
:meth:`Retrieval.run` once. It adds a "Document Context" block of numbered chunks to the
request's system prompt, returns the sources (document, chunk, score, where) that the
answer and its stored exchange carry, and names every private workspace it read: that
makes the request local-only through :func:`oblix_core.request.privacy.decide`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from oblix_core.documents.errors import EmbedderError
from oblix_core.documents.ranking import reciprocal_rank_fusion
from oblix_core.documents.records import SearchHit, Workspace

if TYPE_CHECKING:
    from oblix_core.documents.library import Library

log = logging.getLogger(__name__)

#: Chunks put in the context block of one request.
DEFAULT_TOP_K = 5
HEADER = "Document Context"
INSTRUCTION = (
    "Answer from the numbered document excerpts below when they hold the answer, and cite them "
    "by number, like [1]. If they do not hold it, say so."
)


@attrs.frozen
class Retrieved:
    """What a request's retrieval found."""

    context: str
    sources: tuple[dict[str, Any], ...]
    #: One reason per private workspace searched (each makes the request local-only).
    private_reasons: tuple[str, ...]


def sources_text(found: Sequence[dict[str, Any]]) -> str:
    """The sources an answer drew on, numbered as it cites them (what the CLI and chat print)."""
    lines = ["Sources:"]
    for source in found:
        where = f"{source['document']}, {source['location']}"
        lines.append(f"  [{source['n']}] {where} (score {source['score']:.4f})")
    return "\n".join(lines)


def private_reason(workspace: Workspace) -> str:
    return f"it draws on the private document workspace {workspace.name!r}"


def context_block(hits: Sequence[SearchHit]) -> str:
    """The "Document Context" block: numbered excerpts, each with its document and place."""
    lines = [f"{HEADER}:", INSTRUCTION, ""]
    for n, hit in enumerate(hits, start=1):
        lines.append(f"[{n}] {hit.doc_name}, {hit.chunk.location()}:")
        lines.append(hit.chunk.text.strip())
        lines.append("")
    return "\n".join(lines).rstrip()


def sources(hits: Sequence[SearchHit], workspaces: dict[str, Workspace]) -> tuple[dict[str, Any], ...]:
    """The sources an answer reports: number, document, chunk, score and place."""
    found = []
    for n, hit in enumerate(hits, start=1):
        c = hit.chunk
        workspace = workspaces.get(str(hit.metadata.get("workspace_id", "")))
        found.append(
            {
                "n": n,
                "document": hit.doc_name,
                "doc_id": c.doc_id,
                "chunk": c.chunk_idx,
                "chunk_id": c.id,
                "score": round(hit.score, 6),
                "location": c.location(),
                "workspace_id": workspace.id if workspace else None,
                "workspace": workspace.name if workspace else None,
            }
        )
    return tuple(found)


def search_workspaces(
    library: Library, workspaces: Sequence[Workspace], query: str, k: int, *, local_only: bool
) -> list[SearchHit]:
    """The ``k`` best chunks of ``workspaces`` for a request's ``query``.

    Each workspace is searched by words and meaning (hybrid), by words only where the
    request is ``local_only`` and the workspace's embedder is not local (the query never
    leaves the machine), and where its embedder fails (down, no key): its words still find
    chunks. Several workspaces' lists are fused by rank, not by score: a keyword-only list's
    BM25 scores and a hybrid list's fused ones are on different scales.
    """
    lists = []
    for workspace in workspaces:
        try:
            embedder_local = library.workspace_embedder(workspace).is_local
            mode = "keyword" if local_only and not embedder_local else "hybrid"
            lists.append(library.search(workspace, query, k, mode=mode))
        except EmbedderError as exc:
            log.warning(
                "workspace %s searched by keywords only: its embedder failed (%s)", workspace.name, exc
            )
            lists.append(library.search(workspace, query, k, mode="keyword"))
    return lists[0] if len(lists) == 1 else reciprocal_rank_fusion(lists, k)


@attrs.frozen
class Retrieval:
    """The search a request runs (both callables block; :func:`apply` runs them in a worker thread).

    ``resolve()`` finds the workspaces (an unknown one raises); ``search(workspaces, query, k)``
    returns the best chunks of all of them.
    """

    resolve: Callable[[], tuple[Workspace, ...]]
    search: Callable[[tuple[Workspace, ...], str, int], list[SearchHit]]
    top_k: int = DEFAULT_TOP_K
    #: The workspace ids or names as the caller gave them (what an idempotency key's request
    #: is compared on).
    refs: tuple[str, ...] = ()

    def run(self, workspaces: tuple[Workspace, ...], query: str) -> Retrieved:
        hits = self.search(workspaces, query, self.top_k) if workspaces else []
        by_id = {w.id: w for w in workspaces}
        reasons = tuple(private_reason(w) for w in workspaces if w.private)
        return Retrieved(context_block(hits) if hits else "", sources(hits, by_id), reasons)


async def apply(request: Any) -> None:
    """The retrieval step of a request (``request.retrieval``, if any), run once before its
    session is read: the workspaces are found first and each private one is named in
    ``request.local_only_sources`` (the request is local-only, whatever happens next); then
    the context block is added to ``request.system`` and the sources set in ``request.sources``."""
    retrieval: Retrieval | None = request.retrieval
    if retrieval is None:
        return
    import anyio

    workspaces = await anyio.to_thread.run_sync(retrieval.resolve)
    request.local_only_sources = (
        *request.local_only_sources,
        *(private_reason(w) for w in workspaces if w.private),
    )
    found = await anyio.to_thread.run_sync(retrieval.run, workspaces, request.prompt)
    request.sources = found.sources
    if found.context:
        request.system = f"{request.system}\n\n{found.context}" if request.system else found.context
