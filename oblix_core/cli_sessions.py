"""``oblix sessions ...``: list, show, export, import, delete, copy, merge."""

from __future__ import annotations

import anyio
import click

from oblix_core.cli import handle_errors, make_client, print_json, print_table

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _metadata_filter(pairs: tuple[str, ...]) -> dict[str, str] | None:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--filter")
        result[key] = value
    return result or None


@click.group()
def sessions() -> None:
    """Manage stored conversation sessions."""


@sessions.command("list")
@click.option("--limit", default=50, show_default=True, help="How many sessions.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Metadata filter.")
@json_option
@handle_errors
def list_(limit: int, filters: tuple[str, ...], as_json: bool) -> None:
    """List sessions, most recently updated first."""
    found = make_client().list_sessions(limit=limit, filter_metadata=_metadata_filter(filters))
    if as_json:
        print_json(found)
        return
    rows = [(s["id"], s["title"], s["updated_at"], s["message_count"], s["metadata"]) for s in found]
    print_table("Sessions", ["id", "title", "updated", "messages", "metadata"], rows)


@sessions.command()
@click.argument("session_id")
@json_option
@handle_errors
def show(session_id: str, as_json: bool) -> None:
    """Show a session and its messages."""
    data = make_client().load_session(session_id)
    if as_json:
        print_json(data)
        return
    click.echo(f"{data['title'] or '(untitled)'}  [{data['id']}]")
    click.echo(f"created {data['created_at']}  updated {data['updated_at']}")
    if data["metadata"]:
        click.echo(f"metadata: {data['metadata']}")
    if data["context"]:
        click.echo(f"context: {data['context']}")
    for message in data["messages"]:
        who = message["role"] + (f" ({message['model_id']})" if message.get("model_id") else "")
        click.echo(f"\n[{message['timestamp']}] {who}:\n{message['content']}")


def _done(as_json: bool, session_id: str, text: str) -> None:
    """Report the session a command produced: its id (or JSON), for scripts and people."""
    if as_json:
        print_json({"session_id": session_id})
    else:
        click.echo(text)


@sessions.command()
@click.argument("session_id")
@click.argument("file_path", type=click.Path(dir_okay=False))
@json_option
@handle_errors
def export(session_id: str, file_path: str, as_json: bool) -> None:
    """Export a session to a JSON file."""
    anyio.run(make_client().export_session, session_id, file_path)
    _done(as_json, session_id, f"Exported {session_id} to {file_path}")


@sessions.command("import")
@click.argument("file_path", type=click.Path(dir_okay=False))
@click.option("--new-id", is_flag=True, help="Give the imported session a fresh id.")
@json_option
@handle_errors
def import_(file_path: str, new_id: bool, as_json: bool) -> None:
    """Import a session from a JSON file; prints its id."""
    session_id = anyio.run(make_client().import_session, file_path, new_id)
    _done(as_json, session_id, session_id)


@sessions.command()
@click.argument("session_id")
@json_option
@handle_errors
def delete(session_id: str, as_json: bool) -> None:
    """Delete a session."""
    if not make_client().delete_session(session_id):
        raise click.ClickException(f"No session {session_id}.")
    _done(as_json, session_id, f"Deleted {session_id}")


@sessions.command()
@click.argument("session_id")
@click.option("--title", default=None, help="Title of the copy.")
@json_option
@handle_errors
def copy(session_id: str, title: str | None, as_json: bool) -> None:
    """Copy a session; prints the new id."""
    new_id = anyio.run(make_client().copy_session, session_id, title)
    _done(as_json, new_id, new_id)


@sessions.command()
@click.argument("session_ids", nargs=-1, required=True)
@click.option("--title", default=None, help="Title of the merged session.")
@json_option
@handle_errors
def merge(session_ids: tuple[str, ...], title: str | None, as_json: bool) -> None:
    """Merge sessions into a new one; prints the new id."""
    new_id = anyio.run(make_client().merge_sessions, list(session_ids), title)
    _done(as_json, new_id, new_id)
