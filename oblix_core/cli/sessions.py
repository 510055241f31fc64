"""``oblix sessions ...``: list, search, show, export, import, delete, copy, merge, migrate, repair.

Every command that takes a session id also takes any unique start of one. Oblix 0.1.2's
``view`` (= ``show``) and ``create [--title]`` work too.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import click

from oblix_core.cli import files as cli_io
from oblix_core.cli.common import (
    handle_errors,
    parse_pairs,
    print_json,
    session_client,
)
from oblix_core.cli.tables import print_sessions
from oblix_core.client import OblixClient
from oblix_core.errors import OblixError, SessionExistsError
from oblix_core.sessions.api import resolve_session_id
from oblix_core.terminal.printable import on_terminal, printable

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def sessions() -> None:
    """Manage stored conversation sessions (ids may be shortened to any unique start)."""


@sessions.command("list")
@click.option("--limit", default=50, show_default=True, help="How many sessions.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help='Metadata filter; VALUE is JSON when it parses (true, 3, "x"), else a string.',
)
@json_option
@handle_errors
def list_(limit: int, filters: tuple[str, ...], as_json: bool) -> None:
    """List sessions, most recently updated first."""
    wanted = parse_pairs(filters, "--filter") or None
    with session_client() as client:
        found = client.list_sessions(limit=limit, filter_metadata=wanted)
    if as_json:
        print_json(found)
        return
    print_sessions("Sessions", found)


@sessions.command()
@click.argument("text")
@click.option("--limit", default=20, show_default=True, help="How many sessions at most.")
@json_option
@handle_errors
def search(text: str, limit: int, as_json: bool) -> None:
    """Sessions whose title or messages contain TEXT (case-insensitive), newest first."""
    if not text.strip():
        raise click.BadParameter("give some text to look for", param_hint="TEXT")
    with session_client() as client:
        found = client.store.search(text, limit=limit)
    if as_json:
        print_json(found)
        return
    print_sessions(f"Sessions containing {text!r}", found, snippets=True)


@sessions.command()
@click.argument("session_id", required=False)
@click.option("--last", is_flag=True, help="Only the last answer.")
@json_option
@handle_errors
def show(session_id: str | None, last: bool, as_json: bool) -> None:
    """Show a session and its messages (or, with --last, its last answer).

    Without SESSION_ID: the most recently updated session (`oblix sessions show --last`
    prints the latest answer).
    """
    with session_client() as client:
        _show(client, session_id or _latest(client, answered=last), last, as_json)


@sessions.command()
@click.argument("session_id")
@json_option
@handle_errors
def view(session_id: str, as_json: bool) -> None:
    """Show a session and its messages (Oblix 0.1.2's name for `show`)."""
    with session_client() as client:
        _show(client, session_id, False, as_json)


@sessions.command()
@click.option("--title", default=None, help="Title of the new session.")
@json_option
@handle_errors
def create(title: str | None, as_json: bool) -> None:
    """Create an empty session; prints its id."""
    with session_client() as client:
        session_id = anyio.run(client.create_session, title)
    _done(as_json, session_id, session_id)


#: Sessions looked at, newest first, for the latest answer (``show --last`` without an id).
LATEST_SCAN = 50


def _latest(client: OblixClient, answered: bool = False) -> str:
    """The most recently updated session's id; with ``answered``, the newest that has an answer."""
    found = client.list_sessions(limit=LATEST_SCAN if answered else 1)
    if not found:
        raise OblixError("There is no session yet; `oblix run PROMPT` starts one.")
    if not answered:
        return str(found[0]["id"])
    for summary in found:
        recent = client.store.load_recent(summary["id"], 2) if summary["message_count"] else None
        if recent is not None and any(m.role == "assistant" for m in recent.messages):
            return str(summary["id"])
    raise OblixError(f"None of the {len(found)} most recent sessions has an answer yet.")


def _show(client: OblixClient, session_id: str, last: bool, as_json: bool) -> None:
    session_id = resolve_session_id(client, session_id)
    if last:
        record = client.store.load_recent(session_id, 2)
        answers = [m.to_dict() for m in record.messages if m.role == "assistant"]
        if not answers:
            raise OblixError(f"Session {session_id} has no answer yet.")
        if as_json:
            print_json(answers[-1])
        else:
            click.echo(on_terminal(answers[-1]["content"], sys.stdout))
        return
    data = client.load_session(session_id)
    if as_json:
        print_json(data)
        return
    _print_session(data)


def _print_session(data: dict[str, Any]) -> None:
    """A session for people: stored text made :func:`printable` (no escape reaches the terminal)."""
    click.echo(printable(f"{data['title'] or '(untitled)'}  [{data['id']}]"))
    click.echo(printable(f"created {data['created_at']}  updated {data['updated_at']}"))
    if data["metadata"]:
        click.echo(printable(f"metadata: {data['metadata']}"))
    if data["context"]:
        click.echo(printable(f"context: {data['context']}"))
    for message in data["messages"]:
        who = message["role"] + (f" ({message['model_id']})" if message.get("model_id") else "")
        if (message.get("metrics") or {}).get("interrupted"):
            who += " [interrupted]"
        click.echo(printable(f"\n[{message['timestamp']}] {who}:\n{message['content']}"))


def _done(as_json: bool, session_id: str, text: str) -> None:
    """Report the session a command produced: its id (or JSON), for scripts and people."""
    if as_json:
        print_json({"session_id": session_id})
    else:
        click.echo(text)


@sessions.command()
@click.argument("session_id")
@click.argument("file_path", type=click.Path(dir_okay=False, allow_dash=True))
@json_option
@handle_errors
def export(session_id: str, file_path: str, as_json: bool) -> None:
    """Export a session to a JSON file; `-` (or a pipe, /dev/stdout) writes it to stdout."""
    if file_path == cli_io.STDIO and as_json:
        raise click.UsageError("--json cannot go with `-`: the export itself is the JSON on stdout.")
    with session_client() as client:
        session_id = resolve_session_id(client, session_id)
        streamed = cli_io.export_session(client, session_id, file_path)
    if streamed and not as_json:
        click.echo(f"Exported {session_id}", err=True)
        return
    _done(as_json, session_id, f"Exported {session_id} to {file_path}")


@sessions.command("import")
@click.argument("file_paths", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--new-id", is_flag=True, help="Give the imported sessions fresh ids.")
@json_option
@handle_errors
def import_(file_paths: tuple[str, ...], new_id: bool, as_json: bool) -> None:
    """Import sessions from JSON files (exports, or Oblix 0.1.2's ~/.oblix/sessions/*.json); prints the ids.

    `-` reads one session from stdin (oblix sessions import - < s.json).

    With several files, sessions already stored are skipped and reported, and a file
    that cannot be imported is reported without stopping the others (exit status 1).
    """
    if len(file_paths) > 1:
        _import_many(file_paths, new_id, as_json)
        return
    file_path = file_paths[0]
    try:
        with session_client() as client:
            session_id = cli_io.import_session(client, file_path, new_id)
    except SessionExistsError:
        raise OblixError(
            f"The session in {file_path} is already stored; add --new-id to import a copy under a fresh id."
        ) from None
    _done(as_json, session_id, session_id)


def _import_many(file_paths: tuple[str, ...], new_id: bool, as_json: bool) -> None:
    """Import each file; report imported, skipped (already stored) and failed ones."""
    imported: dict[str, str] = {}
    skipped: list[str] = []
    failed: dict[str, str] = {}
    with session_client() as client:
        for path in file_paths:
            try:
                imported[path] = cli_io.import_session(client, path, new_id)
            except SessionExistsError:
                skipped.append(path)
            except (OblixError, OSError) as exc:
                failed[path] = str(exc)
    if as_json:
        print_json({"imported": imported, "skipped": skipped, "failed": failed})
    else:
        for path, session_id in imported.items():
            click.echo(f"{session_id}  {path}")
        for path in skipped:
            click.echo(f"already stored (add --new-id to import a copy): {path}", err=True)
        for path, reason in failed.items():
            click.echo(f"failed: {path}: {reason}", err=True)
        click.echo(f"{len(imported)} imported, {len(skipped)} skipped, {len(failed)} failed.", err=True)
    if failed:
        raise SystemExit(1)


@sessions.command()
@click.argument("session_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting by a start of the id.")
@json_option
@handle_errors
def delete(session_id: str, yes: bool, as_json: bool) -> None:
    """Delete a session (a start of its id asks for confirmation on a terminal; -y skips it)."""
    with session_client() as client:
        given, session_id = session_id, resolve_session_id(client, session_id)
        if given != session_id and not yes and sys.stdin.isatty():
            title = client.store.load_recent(session_id, 0).title
            if not click.confirm(f"Delete session {session_id} ({title or 'untitled'})?", err=True):
                click.echo(f"Kept {session_id}.", err=True)
                raise SystemExit(1)
        deleted = client.delete_session(session_id)
    if not deleted:
        raise OblixError(f"No session {session_id}; `oblix sessions list` shows the sessions.")
    _done(as_json, session_id, f"Deleted {session_id}")


@sessions.command()
@click.argument("session_id")
@click.option("--title", default=None, help="Title of the copy.")
@json_option
@handle_errors
def copy(session_id: str, title: str | None, as_json: bool) -> None:
    """Copy a session; prints the new id."""
    with session_client() as client:
        new_id = anyio.run(client.copy_session, resolve_session_id(client, session_id), title)
    _done(as_json, new_id, new_id)


@sessions.command()
@click.argument("session_ids", nargs=-1, required=True)
@click.option("--title", default=None, help="Title of the merged session.")
@json_option
@handle_errors
def merge(session_ids: tuple[str, ...], title: str | None, as_json: bool) -> None:
    """Merge sessions into a new one; prints the new id."""
    with session_client() as client:
        ids = [resolve_session_id(client, sid) for sid in session_ids]
        new_id = anyio.run(client.merge_sessions, ids, title)
    _done(as_json, new_id, new_id)


def _target_store(client: OblixClient, name: str, options: dict[str, Any]) -> Any:
    if name == "file":
        options.setdefault("root", str(client.home / "sessions"))
    target = client.registry.make_store(name, **options)
    if target.describe() == client.store.describe():
        target.close()
        raise OblixError(
            f"--to {name} names the store the sessions are already in ({client.store.describe()}); "
            "choose another store or other --to-option values."
        )
    return target


@sessions.command()
@click.option(
    "--to", "to", required=True, metavar="NAME", help="The store to copy into (file, redis, s3...)."
)
@click.option(
    "--to-option", "to_options", multiple=True, metavar="KEY=VALUE", help="An option of that store."
)
@json_option
@handle_errors
def migrate(to: str, to_options: tuple[str, ...], as_json: bool) -> None:
    """Copy every session of the current store (see oblix --store) into another store.

    Ids, timestamps, messages, context and metadata are kept. Running it again copies
    nothing twice and brings sessions written meanwhile up to date; a session in the
    target with other content is reported as a conflict and never overwritten; an
    unreadable (damaged) source session is reported as failed. Exit status 1 if there
    were conflicts or failures.
    """
    from rich.progress import Progress

    from oblix_core.cli.common import err_console
    from oblix_core.sessions.migration import migrate_sessions

    with session_client() as client:
        target = _target_store(client, to, parse_pairs(to_options, "--to-option"))
        try:
            with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
                task = bar.add_task(f"Copying sessions to {to}", total=None)

                def progress(done: int, total: int, _session_id: str, _outcome: str) -> None:
                    bar.update(task, completed=done, total=total)

                summary = migrate_sessions(client.store, target, progress)
        finally:
            target.close()
    if as_json:
        print_json(summary.to_dict())
    else:
        click.echo(
            f"Migrated to {to}: {summary.copied} copied, {summary.skipped} already there (skipped), "
            f"{len(summary.conflicts)} conflicts, {len(summary.failed)} failed, "
            f"{summary.updated} brought up to date."
        )
        for session_id in summary.conflicts:
            why = summary.conflict_reasons.get(session_id, "other content")
            click.echo(f"  conflict: {session_id} is in the target with other content ({why}; left as it is)")
        for session_id, reason in summary.failed.items():
            click.echo(f"  failed: {session_id}: {reason}")
    if summary.conflicts or summary.failed:
        raise SystemExit(1)


@sessions.command()
@click.option("--delete", "delete_them", is_flag=True, help="Delete the damaged sessions found.")
@json_option
@handle_errors
def repair(delete_them: bool, as_json: bool) -> None:
    """Find sessions whose stored records are damaged (each reads every session once).

    Lists each damaged session and what is wrong; --delete deletes them. Exit status 1
    while damaged sessions remain.
    """
    from oblix_core.sessions.migration import find_damaged

    with session_client() as client:
        damaged = find_damaged(client.store)
        deleted = [sid for sid in damaged if delete_them and client.store.delete(sid)]
    if as_json:
        print_json({"damaged": damaged, "deleted": deleted})
    else:
        click.echo(
            f"{len(damaged)} damaged sessions" + (f", {len(deleted)} deleted." if delete_them else ".")
        )
        for session_id, reason in damaged.items():
            click.echo(f"  {'deleted' if session_id in deleted else 'damaged'}: {session_id}: {reason}")
    if len(deleted) < len(damaged):
        raise SystemExit(1)
