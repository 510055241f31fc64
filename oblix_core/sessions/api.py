"""The sessions API of the reference document, as a base class of ``OblixClient``.

The reference's sync/async split is kept exactly. Each sync method also has an async
counterpart named with an ``a`` prefix (``aload_session``, ``alist_sessions``,
``ause_session``, ``adelete_session``, ``aupdate_session_metadata``,
``aget_session_metadata``) that runs the store call in a worker thread, for code on an
event loop (a Redis or S3 store blocks on the network). Oblix's own async code uses them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from oblix_core.errors import OblixError, SessionError, SessionExistsError, SessionNotFoundError
from oblix_core.fileio import write_atomically
from oblix_core.sessions import transfer as session_io
from oblix_core.sessions.records import (
    LOCAL_ONLY_KEY,
    SessionRecord,
    new_session_id,
    session_is_local_only,
    utc_now,
    validate_session_id,
)
from oblix_core.sessions.store import SessionStore
from oblix_core.validation import check_json_dict, check_text


def _title(title: Any, name: str = "title") -> str | None:
    if title is None:
        return None
    if not isinstance(title, str):
        raise SessionError(f"{name} must be a string, got {type(title).__name__}.")
    return check_text(title, name, SessionError)


class SessionsAPI:
    """Session management; the client provides ``store`` and the current session."""

    store: SessionStore
    _current_session_id: str | None

    @property
    def current_session_id(self) -> str | None:
        """The session ``execute`` uses when given none (set by :meth:`use_session`)."""
        return self._current_session_id

    async def _call(self, func: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(func, *args)

    async def create_session(
        self, title: str | None = None, initial_context: dict | None = None, metadata: dict | None = None
    ) -> str:
        """Create an empty session and return its id."""
        now = utc_now()
        record = SessionRecord(
            id=new_session_id(),
            title=_title(title),
            created_at=now,
            updated_at=now,
            context=check_json_dict(initial_context, "initial_context", SessionError),
            metadata=check_json_dict(metadata, "metadata", SessionError),
        )
        await self._call(self.store.create, record)
        return record.id

    async def create_and_use_session(
        self, title: str | None = None, initial_context: dict | None = None, metadata: dict | None = None
    ) -> str:
        """Create a session and make it the current one."""
        session_id = await self.create_session(title, initial_context, metadata)
        self._current_session_id = session_id
        return session_id

    def use_session(self, session_id: str) -> bool:
        """Make ``session_id`` the current session; ``False`` if it does not exist."""
        if not self.store.exists(validate_session_id(session_id)):
            return False
        self._current_session_id = session_id
        return True

    def clear_current_session(self) -> None:
        """Forget the current session: the next ``execute`` without ``session_id`` starts a new one."""
        self._current_session_id = None

    def load_session(self, session_id: str) -> dict:
        """The whole session as the API reference's dict."""
        return self.store.load(validate_session_id(session_id)).to_dict()

    def list_sessions(self, limit: int = 50, filter_metadata: dict | None = None) -> list[dict]:
        """Session summaries, most recently updated first, filtered by metadata equality."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise SessionError(f"limit must be a non-negative integer, got {limit!r}.")
        wanted = check_json_dict(filter_metadata, "filter_metadata", SessionError)
        return self.store.list(limit, wanted or None)

    def delete_session(self, session_id: str) -> bool:
        """Delete a session; ``False`` if it did not exist."""
        deleted = self.store.delete(validate_session_id(session_id))
        if deleted and self._current_session_id == session_id:
            self._current_session_id = None
        return deleted

    def update_session_metadata(self, session_id: str, metadata: dict) -> bool:
        """Merge ``metadata`` into the session's metadata; ``False`` if it does not exist.

        A local-only session stays local-only: ``local_only`` can be set, never cleared
        (``"local_only": False`` is refused for a local-only session and otherwise left
        out, since an absent key already means "not local-only"; it is never written,
        so it cannot race a concurrent local-only turn).
        """
        changes = check_json_dict(metadata, "metadata", SessionError)
        validate_session_id(session_id)
        if changes.get(LOCAL_ONLY_KEY, True) is False:
            del changes[LOCAL_ONLY_KEY]
            try:
                current = self.store.get_metadata(session_id)
            except SessionNotFoundError:
                return False
            if session_is_local_only(current):
                raise SessionError(
                    f"Session {session_id} is local-only and stays so; copy its non-private parts "
                    "into a new session instead."
                )
        try:
            self.store.update_metadata(session_id, changes)
        except SessionNotFoundError:
            return False
        return True

    def get_session_metadata(self, session_id: str) -> dict:
        """The session's metadata, without loading its messages."""
        return self.store.get_metadata(validate_session_id(session_id))

    # -- async counterparts of the sync methods -------------------------------------------

    async def ause_session(self, session_id: str) -> bool:
        """:meth:`use_session`, with the store call in a worker thread."""
        return bool(await self._call(self.use_session, session_id))

    async def aload_session(self, session_id: str) -> dict:
        """:meth:`load_session`, with the store call in a worker thread."""
        return dict(await self._call(self.load_session, session_id))

    async def alist_sessions(self, limit: int = 50, filter_metadata: dict | None = None) -> list[dict]:
        """:meth:`list_sessions`, with the store call in a worker thread."""
        return list(await self._call(self.list_sessions, limit, filter_metadata))

    async def adelete_session(self, session_id: str) -> bool:
        """:meth:`delete_session`, with the store call in a worker thread."""
        return bool(await self._call(self.delete_session, session_id))

    async def aupdate_session_metadata(self, session_id: str, metadata: dict) -> bool:
        """:meth:`update_session_metadata`, with the store call in a worker thread."""
        return bool(await self._call(self.update_session_metadata, session_id, metadata))

    async def aget_session_metadata(self, session_id: str) -> dict:
        """:meth:`get_session_metadata`, with the store call in a worker thread."""
        return dict(await self._call(self.get_session_metadata, session_id))

    # -- documents --------------------------------------------------------------------------

    def _export_target(self, file_path: Any) -> Path:
        """The file an export may write: a new or regular file, outside the store's own folder."""
        if not isinstance(file_path, str | os.PathLike) or not os.fspath(file_path).strip():
            raise OblixError("export_session needs a file path, e.g. 'session.json'.")
        if "\x00" in os.fspath(file_path):
            raise OblixError("The export path contains a NUL character; give an ordinary file path.")
        path = Path(file_path).expanduser().resolve()  # through symlinks: the file really written
        if path.is_dir():
            raise OblixError(f"Cannot export to {path}: it is a directory; give a file name inside it.")
        if path.exists() and not path.is_file():
            raise OblixError(
                f"Cannot export to {path}: it is not a regular file (a device, pipe or socket); "
                "give the path of a new or ordinary file."
            )
        if self.store.contains_path(path):
            raise OblixError(
                f"Cannot export to {path}: it is inside the session store's own folder; choose a "
                "path outside it."
            )
        return path

    async def export_session(self, session_id: str, file_path: str) -> bool:
        """Write the session to ``file_path`` as JSON (the reference shape + ``format_version``)."""
        path = self._export_target(file_path)
        data = (await self.export_session_json(session_id)).encode("utf-8")
        try:
            await anyio.Path(path.parent).mkdir(mode=0o700, parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(lambda: write_atomically(path, data, mode=0o600))  # private
        except OSError as exc:
            raise OblixError(f"Cannot write the export to {path}: {exc.strerror or exc}.") from None
        return True

    async def import_session(
        self, file_path: str, new_id: bool = False, use_immediately: bool = False
    ) -> str:
        """Import a session file; returns its id (a fresh one with ``new_id=True``)."""
        try:
            text = await anyio.Path(file_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise OblixError(f"Cannot read session file {file_path!r}: {exc}.") from None
        return await self.import_session_json(text, new_id, use_immediately, source=str(file_path))

    async def export_session_json(self, session_id: str) -> str:
        """The session's export document as JSON text (what :meth:`export_session` writes)."""
        record = await self._call(self.store.load, validate_session_id(session_id))
        return session_io.dumps(record)

    async def import_session_json(
        self, text: str, new_id: bool = False, use_immediately: bool = False, *, source: str = "<text>"
    ) -> str:
        """Import a session from its export JSON ``text`` (read from ``source``, for messages)."""
        record = session_io.loads(text, source)
        if new_id:
            record = session_io.with_new_id(record)
        try:
            await self._call(self.store.create, record)
        except SessionExistsError:
            raise SessionExistsError(
                f"A session with id {record.id} already exists; import it with a new id "
                "(new_id=True, or --new-id on the command line) to keep both."
            ) from None
        if use_immediately:
            self._current_session_id = record.id
        return record.id

    async def copy_session(
        self, session_id: str, new_title: str | None = None, use_immediately: bool = False
    ) -> str:
        """Copy a session (messages, context, metadata) under a new id."""
        new_title = _title(new_title, "new_title")
        source = await self._call(self.store.load, validate_session_id(session_id))
        copy = session_io.with_new_id(
            source, new_title if new_title is not None else f"Copy of {source.title or source.id}"
        )
        await self._call(self.store.create, copy)
        if use_immediately:
            self._current_session_id = copy.id
        return copy.id

    async def merge_sessions(
        self, session_ids: list[str], title: str | None = None, use_immediately: bool = False
    ) -> str:
        """Merge sessions into a new one (see :func:`oblix_core.sessions.transfer.merge`)."""
        if not isinstance(session_ids, list | tuple) or not session_ids:
            raise SessionError("merge_sessions needs a non-empty list of session ids.")
        title = _title(title)
        unique = list(dict.fromkeys(validate_session_id(sid) for sid in session_ids))
        sources = [await self._call(self.store.load, sid) for sid in unique]
        merged = session_io.merge(sources, title)
        await self._call(self.store.create, merged)
        if use_immediately:
            self._current_session_id = merged.id
        return merged.id


#: How many sessions an id-prefix lookup reads (the store interface has no prefix query).
PREFIX_SCAN_LIMIT = 2**31 - 1


def resolve_session_id(client: SessionsAPI, text: str) -> str:
    """The id of the one session whose id is ``text`` or starts with it.

    An exact id costs one lookup; a prefix scans the listing (the store interface has
    no prefix query: one listing of every session, fine for thousands).
    """
    validate_session_id(text)
    if client.store.exists(text):
        return text
    matches = [s["id"] for s in client.list_sessions(limit=PREFIX_SCAN_LIMIT) if s["id"].startswith(text)]
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise SessionNotFoundError(f"No session {text}; `oblix sessions list` shows the sessions.")
    shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
    raise OblixError(f"Session id prefix {text} matches {len(matches)} sessions ({shown}); type more of it.")
