"""``oblix docs``: add, sync, list, search and remove your documents (see docs/documents.md).

Every command works on the document index ``config.toml`` ``[documents]`` chooses (by
default the SQLite index in the Oblix home, ``oblix[docs]``; the client opens it); the
workspace is named with ``--workspace`` (default: ``default``). Long ingests show a
progress bar on stderr; searching works on what is already ingested meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import click

from oblix_core.cli.common import err_console, handle_errors, make_client, print_json
from oblix_core.cli.tables import Column, print_table
from oblix_core.terminal.printable import printable

DEFAULT = "default"


@click.group()
def docs() -> None:
    """Your documents: answers drawn from your files, searched on this machine."""


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, str, int], None]]:
    """A progress callback for an ingest: files done and chunks embedded (stderr, terminals only)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(label)
        counts = {"files": 0, "chunks": 0}

        def progress(event: str, path: str, chunks: int) -> None:
            counts["files"] += 1
            if event == "embedded":
                counts["chunks"] += chunks
            bar.update(
                task,
                description=f"{label}: {counts['files']} files, {counts['chunks']} chunks embedded · {path}",
            )

        yield progress


def _report(stats: dict[str, Any]) -> None:
    click.echo(
        f"{stats.get('added', 0)} added, {stats.get('updated', 0)} updated, "
        f"{stats.get('unchanged', 0)} unchanged, {stats.get('deleted', 0)} deleted; "
        f"{stats.get('chunks_embedded', 0)} chunks embedded."
    )
    for skipped in stats.get("skipped", []):
        click.echo(f"  skipped {skipped['path']}: {skipped['reason']}", err=True)


async def _workspace_for(client: Any, name: str, private: bool) -> str:
    for workspace in await client.list_workspaces():
        if name in (workspace["id"], workspace["name"]):
            if private and not workspace["private"]:
                raise click.UsageError(f"Workspace {name!r} exists and is not private; pick another name.")
            return str(workspace["id"])
    return str(await client.create_workspace(name, private=private))


@docs.command("add")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("-w", "--workspace", default=DEFAULT, show_default=True, help="The workspace (created if new).")
@click.option("--private", is_flag=True, help="Embed only locally; every request drawing on it stays local.")
@click.option(
    "--exclude", "excludes", multiple=True, metavar="GLOB", help="Leave out matching files (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def add(path: Path, workspace: str, private: bool, excludes: tuple[str, ...], as_json: bool) -> None:
    """Add a file or a directory (kept in sync: `oblix docs sync`)."""

    async def main() -> dict[str, Any]:
        async with make_client() as client:
            ws = await _workspace_for(client, workspace, private)
            with _progress(f"Adding {path.name}") as progress:
                return await client.register_connector(
                    "directory" if path.is_dir() else "document",
                    str(path),
                    workspace_id=ws,
                    exclude_patterns=list(excludes),
                    private=private,
                    progress=progress,
                )

    result = anyio.run(main)
    if as_json:
        print_json(result)
        return
    click.echo(
        f"{path} → workspace {workspace} ({result['stats']['documents']} documents, "
        f"{result['stats']['chunks']} chunks)."
    )
    _report(result["stats"])


@docs.command("sync")
@click.option("-w", "--workspace", default=None, help="Only this workspace's connectors.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def sync(workspace: str | None, as_json: bool) -> None:
    """Bring every added directory up to date (only changed files are embedded again)."""

    async def main() -> list[dict[str, Any]]:
        async with make_client() as client:
            if workspace is not None:  # an unknown workspace is an error, not "nothing to sync"
                await client.get_documents_in_workspace(workspace)
            results = []
            with _progress("Syncing") as progress:
                for connector in await client.list_connectors():
                    if workspace in (None, connector["workspace"], connector["workspace_id"]):
                        results += await client.sync_connectors(connector["id"], progress=progress)
            return results

    results = anyio.run(main)
    if as_json:
        print_json(results)
        return
    if not results:
        click.echo("Nothing to sync: add a directory with `oblix docs add PATH`.")
    for result in results:
        click.echo(f"{result['connector_id']}: ", nl=False)
        _report(result)


@docs.command("list")
@click.option("-w", "--workspace", default=None, help="List this workspace's documents instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def list_(workspace: str | None, as_json: bool) -> None:
    """List workspaces (size, embedder, privacy), or one workspace's documents."""

    async def main() -> list[dict[str, Any]]:
        async with make_client() as client:
            if workspace:
                return await client.get_documents_in_workspace(workspace)
            return await client.list_workspaces()

    rows = anyio.run(main)
    if as_json:
        print_json(rows)
    elif workspace:
        print_table(
            None,
            [
                Column("document", keep=100, wraps=True),
                Column("chunks", right=True, keep=50),
                Column("bytes", right=True, keep=40),
                Column("embedder", keep=30),
            ],
            [[d["name"], d["chunk_count"], d["size"], d["embedder"] or "(not embedded)"] for d in rows],
        )
    else:
        print_table(
            None,
            [
                Column("workspace", keep=100),
                Column("documents", right=True, keep=80),
                Column("chunks", right=True, keep=70),
                Column("private", keep=90),
                Column("embedder", keep=40),
                Column("sources", wraps=True, keep=30),
            ],
            [
                [
                    w["name"],
                    w["documents"],
                    w["chunks"],
                    "yes" if w["private"] else "no",
                    w["embedder"],
                    ", ".join(c["path"] for c in w["connectors"]) or "uploads",
                ]
                for w in rows
            ],
        )


@docs.command("search")
@click.argument("query")
@click.option("-w", "--workspace", default=DEFAULT, show_default=True, help="The workspace to search.")
@click.option("-k", "top_k", type=int, default=5, show_default=True, help="How many results.")
@click.option(
    "--mode", type=click.Choice(["hybrid", "keyword", "vector"]), default="hybrid", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def search(query: str, workspace: str, top_k: int, mode: str, as_json: bool) -> None:
    """Search a workspace: the best chunks, with their document and place."""

    async def main() -> list[dict[str, Any]]:
        async with make_client() as client:
            return await client.search_workspace(workspace, query, top_k, mode=mode)

    hits = anyio.run(main)
    if as_json:
        print_json(hits)
        return
    if not hits:
        click.echo("No match.")
    for n, hit in enumerate(hits, start=1):
        click.echo(printable(f"[{n}] {hit['doc_name']}, {hit['location']} (score {hit['score']:.4f})"))
        click.echo(printable("    " + hit["text"].strip().replace("\n", "\n    ")[:600]))


@docs.command("rm")
@click.argument("target")
@click.option(
    "-w", "--workspace", default=None, help="Remove TARGET (a document name or id) from this workspace."
)
@handle_errors
def rm(target: str, workspace: str | None) -> None:
    """Remove a workspace (TARGET), or with -w a document of it; your files are never touched."""

    async def main() -> str:
        async with make_client() as client:
            if workspace is None:
                await client.delete_workspace(target)
                return f"Removed workspace {target} and its documents from the index."
            for doc in await client.get_documents_in_workspace(workspace):
                if target in (doc["id"], doc["name"], doc["path"]):
                    await client.delete_document(doc["id"], workspace)
                    return f"Removed {doc['name']} from workspace {workspace}."
            raise click.UsageError(
                f"No document {target!r} in workspace {workspace!r} (oblix docs list -w {workspace})."
            )

    click.echo(anyio.run(main))
