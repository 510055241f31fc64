"""Copy every session from one session store to another, safely and repeatably."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import attrs

from oblix_core.errors import OblixError, SessionExistsError, SessionNotFoundError
from oblix_core.records import SessionRecord
from oblix_core.stores import SessionStore

#: What happened to one session: copied, already identical in the target (skipped),
#: present in the target with other content (conflict), or unreadable/vanished (failed).
Outcome = Literal["copied", "skipped", "conflict", "failed"]

#: ``progress(done, total, session_id, outcome)``, called once per session.
ProgressCallback = Callable[[int, int, str, Outcome], None]

#: Asks ``SessionStore.list`` for every session (the interface has no paging).
ALL_SESSIONS = 2**31 - 1


@attrs.frozen
class MigrationSummary:
    """The result of :func:`migrate_sessions`."""

    copied: int = 0
    skipped: int = 0
    conflicts: tuple[str, ...] = ()
    failed: dict[str, str] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        return self.copied + self.skipped + len(self.conflicts) + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``oblix sessions migrate --json``)."""
        return {
            "copied": self.copied,
            "skipped": self.skipped,
            "conflicts": list(self.conflicts),
            "failed": dict(self.failed),
        }


def same_content(a: SessionRecord, b: SessionRecord) -> bool:
    """Equal sessions as the API shows them, comparing JSON values (``1`` is not ``true``)."""
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


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
    return (
        ("skipped", "") if same_content(record, present) else ("conflict", "different content in the target")
    )


def migrate_sessions(
    source: SessionStore, target: SessionStore, progress: ProgressCallback | None = None
) -> MigrationSummary:
    """Copy every session of ``source`` into ``target``; returns a :class:`MigrationSummary`.

    Signature: ``migrate_sessions(source, target, progress=None) -> MigrationSummary``.

    * Ids, titles, timestamps, messages (with their ids, timestamps, model ids and
      metrics), context and metadata are copied unchanged, each session with one
      atomic ``target.create``.
    * Idempotent: a session already in the target with the same content is *skipped*,
      so a second run (or a run resumed after an interruption) copies nothing twice.
    * A session already in the target with other content is a *conflict*: reported by
      id in ``summary.conflicts`` and never overwritten.
    * A source session that cannot be read is reported in ``summary.failed``
      (id -> reason) and the migration goes on.
    * ``progress(done, total, session_id, outcome)`` is called after each session
      (``outcome`` is ``"copied"``, ``"skipped"``, ``"conflict"`` or ``"failed"``): a
      CLI drives its progress bar with it.

    The source is read as it is at the start: sessions created during the run may be
    missed and messages appended during the run may be copied or not; run it again
    (cheap: identical sessions are skipped) after the writers have stopped. Connection
    errors of either store propagate as :class:`~oblix_core.errors.OblixError`.
    """
    ids = [summary["id"] for summary in source.list(limit=ALL_SESSIONS)]
    counts = {"copied": 0, "skipped": 0}
    conflicts: list[str] = []
    failed: dict[str, str] = {}
    for done, session_id in enumerate(ids, 1):
        outcome, reason = _copy_one(source, target, session_id)
        if outcome == "conflict":
            conflicts.append(session_id)
        elif outcome == "failed":
            failed[session_id] = reason
        else:
            counts[outcome] += 1
        if progress is not None:
            progress(done, len(ids), session_id, outcome)
    return MigrationSummary(counts["copied"], counts["skipped"], tuple(conflicts), failed)
