"""Copy every session from one session store to another, safely and repeatably; find damaged ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from oblix_core.errors import OblixError, SessionCorruptedError, SessionExistsError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, parse_timestamp
from oblix_core.sessions.store import SessionStore

#: What happened to one session: copied, brought up to date (the target held an earlier
#: state of it), already identical in the target (skipped), present in the target with
#: other content (conflict), or unreadable/vanished in the source (failed).
Outcome = Literal["copied", "updated", "skipped", "conflict", "failed"]

#: ``progress(done, total, session_id, outcome)``, called once per session.
ProgressCallback = Callable[[int, int, str, Outcome], None]

#: Asks ``SessionStore.list`` for every session (the interface has no paging).
ALL_SESSIONS = 2**31 - 1


@attrs.frozen
class MigrationSummary:
    """The result of :func:`migrate_sessions`; ``conflict_reasons`` says what differs, by id."""

    copied: int = 0
    skipped: int = 0
    conflicts: tuple[str, ...] = ()
    failed: dict[str, str] = attrs.field(factory=dict)
    updated: int = 0
    conflict_reasons: dict[str, str] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        return self.copied + self.updated + self.skipped + len(self.conflicts) + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``oblix sessions migrate --json``)."""
        return {
            "copied": self.copied,
            "updated": self.updated,
            "skipped": self.skipped,
            "conflicts": list(self.conflicts),
            "conflict_reasons": dict(self.conflict_reasons),
            "failed": dict(self.failed),
        }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def same_content(a: SessionRecord, b: SessionRecord) -> bool:
    """Equal sessions as the API shows them, comparing JSON values (``1`` is not ``true``)."""
    return _json(a.to_dict()) == _json(b.to_dict())


def _header_time(record: SessionRecord) -> float:
    return parse_timestamp(record.updated_at or record.created_at).timestamp()


def compare(source: SessionRecord, target: SessionRecord) -> tuple[str, str]:
    """How ``target`` relates to ``source``: ``("same"|"behind"|"diverged", reason)``.

    * ``same``: equal title, creation time, context, metadata and messages (JSON values).
      ``updated_at`` alone may differ: a caught-up metadata change carries the time of
      the catch-up.
    * ``behind``: an earlier state of ``source``: the same title, creation time and
      context; its messages are a prefix of the source's; and its metadata is the
      source's, or an older version of it (no key the source lacks, and an older
      ``updated_at``: metadata updates only merge keys and move ``updated_at`` on).
    * ``diverged``: anything else; ``reason`` names the first difference.
    """
    for field in ("title", "created_at", "context"):
        if _json(getattr(source, field)) != _json(getattr(target, field)):
            return "diverged", f"the {field.replace('_', ' ')} differs"
    ours = [_json(m.to_dict()) for m in source.messages]
    theirs = [_json(m.to_dict()) for m in target.messages]
    if theirs != ours[: len(theirs)]:
        return "diverged", "the target has messages the source does not have (or other ones)"
    metadata_behind = _json(source.metadata) != _json(target.metadata)
    if metadata_behind and not (
        set(target.metadata) <= set(source.metadata) and _header_time(target) < _header_time(source)
    ):
        return "diverged", "the metadata differs (and was not an earlier version of the source's)"
    if metadata_behind or len(theirs) < len(ours):
        return "behind", ""
    return "same", ""


def _catch_up(target: SessionStore, source: SessionRecord, present: SessionRecord) -> None:
    """Bring ``present`` (an earlier state of ``source`` in ``target``) up to date."""
    changed = {
        k: v
        for k, v in source.metadata.items()
        if k not in present.metadata or _json(present.metadata[k]) != _json(v)
    }
    if changed:  # first, as a writer does: a local-only mark precedes the private turn
        target.update_metadata(source.id, changed)
    missing: Sequence[Message] = source.messages[len(present.messages) :]
    if missing:
        target.append_messages(source.id, missing)


def _copy_one(source: SessionStore, target: SessionStore, session_id: str) -> tuple[Outcome, str]:
    try:
        record = source.load(session_id)
    except SessionNotFoundError:
        return "failed", "deleted from the source during the migration"
    except OblixError as exc:
        return "failed", str(exc)
    if not target.exists(session_id):
        try:
            target.create(record)
            return "copied", ""
        except SessionExistsError:
            pass  # created meanwhile by someone else: compare below
    try:
        present = target.load(session_id)
    except OblixError as exc:
        return "conflict", f"unreadable in the target: {exc}"
    relation, reason = compare(record, present)
    if relation == "same":
        return "skipped", ""
    if relation == "diverged":
        return "conflict", reason
    try:
        _catch_up(target, record, present)
    except OblixError as exc:
        return "conflict", f"could not be brought up to date in the target: {exc}"
    return "updated", ""


def migrate_sessions(
    source: SessionStore, target: SessionStore, progress: ProgressCallback | None = None
) -> MigrationSummary:
    """Copy every session of ``source`` into ``target``; returns a :class:`MigrationSummary`.

    Signature: ``migrate_sessions(source, target, progress=None) -> MigrationSummary``.

    * Every session the source holds is enumerated from the sessions themselves
      (:meth:`~oblix_core.sessions.store.SessionStore.iter_session_ids`, not the listing), and
      is either copied (or found already there) or reported: a source session that
      cannot be read, damaged ones included, is in ``summary.failed`` (id -> reason).
    * Ids, titles, timestamps, messages (with their ids, timestamps, model ids and
      metrics), context and metadata are copied unchanged, each session with one
      atomic ``target.create``.
    * Idempotent: a session already in the target with the same content is *skipped*,
      so a second run (or a run resumed after an interruption) copies nothing twice.
    * A session the target holds in an earlier state (messages appended, or metadata
      updated, in the source since it was copied: see :func:`compare`) is *updated*:
      the missing metadata keys and messages are added. So running it again after
      writers raced the migration finishes the job.
    * A session in the target with other content (a real divergence) is a *conflict*:
      reported by id in ``summary.conflicts`` with what differs in
      ``summary.conflict_reasons``, and never overwritten.
    * ``progress(done, total, session_id, outcome)`` is called after each session.

    Sessions created in the source during the run may be missed: run it again after
    the writers have stopped. Connection errors of either store propagate as
    :class:`~oblix_core.errors.OblixError`.
    """
    ids = list(dict.fromkeys(source.iter_session_ids()))
    counts = {"copied": 0, "updated": 0, "skipped": 0}
    conflicts: dict[str, str] = {}
    failed: dict[str, str] = {}
    for done, session_id in enumerate(ids, 1):
        outcome, reason = _copy_one(source, target, session_id)
        if outcome == "conflict":
            conflicts[session_id] = reason
        elif outcome == "failed":
            failed[session_id] = reason
        else:
            counts[outcome] += 1
        if progress is not None:
            progress(done, len(ids), session_id, outcome)
    return MigrationSummary(
        copied=counts["copied"],
        skipped=counts["skipped"],
        conflicts=tuple(conflicts),
        failed=failed,
        updated=counts["updated"],
        conflict_reasons=conflicts,
    )


def find_damaged(store: SessionStore) -> dict[str, str]:
    """Sessions of ``store`` that cannot be loaded because their records are damaged: id -> reason.

    Reads every session in full (enumerated with ``iter_session_ids``); connection
    errors propagate.
    """
    damaged: dict[str, str] = {}
    for session_id in dict.fromkeys(store.iter_session_ids()):
        try:
            store.load(session_id)
        except SessionCorruptedError as exc:
            damaged[session_id] = str(exc)
        except SessionNotFoundError:
            continue  # deleted meanwhile
    return damaged
