"""The usage ledger of the S3 store: one JSON object per UTC day, shared by every host.

Layout under the store's prefix::

    usage/<YYYY-MM-DD>.json   the day's counters, the request ids it counted, its latest records

A day object::

    {"format": 1, "day": "2025-06-01",
     "total": [requests, local requests, input, output, cached, cost USD, latency ms (summed)],
     "models": {model id: [the same seven]}, "sessions": {session id, "" for none: [...]},
     "ids": [every request id the day counted],
     "records": [the day's latest records, oldest first, at most ``keep``],
     "dropped": how many of the day's records are no longer in "records"}

Guarantees:

* A record is all-or-nothing: it is checked first (counts are token counts, cost and
  latency finite numbers >= 0: else an OblixError and nothing is written), then counted in
  a read-modify-write of its day's object committed with ``If-Match``
  (``If-None-Match: *`` for a new day). A writer that loses the race (412/409) re-reads
  the object and applies its records again, so concurrent writers in any number of
  threads, processes or hosts never lose a record; a request id the day already counted
  is not counted again (a retried record, or a PUT whose answer was lost).
* Within one ledger, records arriving while a write is in flight are written together
  by the next write (one conditional PUT for all of them).
* ``totals`` and ``spent`` cost one LIST (the days of the window, from its first day on)
  and one GET per day object in the window, fetched in parallel; a day object read
  before is revalidated with ``If-None-Match`` (an unchanged one answers 304, no body).
  Months of data are a few dozen small requests whatever the traffic. ``recent`` reads
  the days newest first until it has enough records (and stops after a day that no
  longer keeps all of its records).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from datetime import UTC, date, datetime
from typing import Any

from oblix.plugin import OblixError, UsageLedger, UsageRecord, UsageTotals, check_usage_record
from oblix_s3.index import MAX_CONFLICTS, backoff
from oblix_s3.layout import dumps
from oblix_s3.objects import ConditionFailed, S3Objects

FORMAT = 1
#: Records a day object keeps for :meth:`S3UsageLedger.recent` (its counters count them all).
KEEP = 1000
_DAY_KEY = re.compile(r"(\d{4}-\d{2}-\d{2})\.json")
_ZERO = (0, 0, 0, 0, 0, 0.0, 0.0)
_GROUPS = {"model": "models", "session": "sessions"}

Doc = dict[str, Any]


def _vector(record: UsageRecord) -> list[Any]:
    return [
        1,
        int(record.local),
        record.input_tokens,
        record.output_tokens,
        record.cached_tokens,
        float(record.cost_usd),
        float(record.latency_ms),
    ]


def _add(into: Sequence[Any], values: Sequence[Any]) -> list[Any]:
    return [a + b for a, b in zip(into, values, strict=True)]


def _totals(key: str, values: Sequence[Any]) -> UsageTotals:
    requests, local, tokens_in, tokens_out, cached, cost, latency = values
    counts = (int(requests), int(local), int(tokens_in), int(tokens_out), int(cached))
    return UsageTotals(key, *counts, float(cost), float(latency))


def _empty(day: str) -> Doc:
    return {
        "format": FORMAT,
        "day": day,
        "total": list(_ZERO),
        "models": {},
        "sessions": {},
        "ids": [],
        "records": [],
        "dropped": 0,
    }


def _apply(doc: Doc, records: Sequence[UsageRecord], keep: int) -> Doc | None:
    """``doc`` with ``records`` counted (a new dict; ``doc`` is left as it was), or ``None``
    when the day counted every one of them already."""
    seen = set(doc["ids"])
    fresh = []
    for record in records:
        if record.request_id not in seen:
            seen.add(record.request_id)
            fresh.append(record)
    if not fresh:
        return None
    total, models, sessions = list(doc["total"]), dict(doc["models"]), dict(doc["sessions"])
    for record in fresh:
        values = _vector(record)
        total = _add(total, values)
        models[record.model_id] = _add(models.get(record.model_id, _ZERO), values)
        session = record.session_id or ""
        sessions[session] = _add(sessions.get(session, _ZERO), values)
    kept = sorted([*doc["records"], *(r.to_dict() for r in fresh)], key=lambda r: str(r["timestamp"]))
    return {
        **doc,
        "total": total,
        "models": models,
        "sessions": sessions,
        "ids": [*doc["ids"], *(r.request_id for r in fresh)],
        "records": kept[-keep:],
        "dropped": int(doc["dropped"]) + max(0, len(kept) - keep),
    }


def _parse(where: str, body: bytes) -> Doc:
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r}")
        if not (
            isinstance(doc["day"], str)
            and len(doc["total"]) == len(_ZERO)
            and isinstance(doc["models"], dict)
            and isinstance(doc["sessions"], dict)
            and isinstance(doc["ids"], list)
            and isinstance(doc["records"], list)
            and isinstance(doc["dropped"], int)
        ):
            raise ValueError("unexpected shape")
    except (ValueError, KeyError, TypeError) as exc:
        raise OblixError(
            f"The usage ledger's day object {where} is damaged or of an unknown format ({exc}). "
            "Restore it from a backup, or run `oblix usage --repair` to move it aside (that day's "
            "usage is then not counted)."
        ) from None
    return doc


class S3UsageLedger(UsageLedger):
    """Usage per UTC day in objects of the store's bucket (see the module docstring)."""

    name = "s3"

    def __init__(
        self, objects: S3Objects, prefix: str, pool: Callable[[], Executor], keep: int = KEEP
    ) -> None:
        self.objects = objects
        self.base = f"{prefix}usage/"
        self.keep = keep
        self._pool = pool
        self._lock = threading.Lock()  # the cache, the queue and the counter
        self._writer = threading.Lock()  # one write in flight per ledger
        self._cache: dict[str, tuple[str, Doc]] = {}
        self._queue: list[tuple[UsageRecord, Future[None]]] = []
        #: Conditional writes this ledger lost and retried.
        self.conflicts = 0

    def _key(self, day: str) -> str:
        if not _DAY_KEY.fullmatch(f"{day}.json"):
            raise OblixError(f"A usage record's timestamp must start with a date YYYY-MM-DD, got {day!r}.")
        return f"{self.base}{day}.json"

    def _read(self, key: str) -> tuple[str | None, Doc | None]:
        """The day object's ``(etag, doc)``, ``(None, None)`` when there is none."""
        with self._lock:
            cached = self._cache.get(key)
        found = self.objects.get(key, if_none_match=cached[0] if cached else None)
        if found is None:
            with self._lock:
                self._cache.pop(key, None)
            return None, None
        body, etag = found
        if cached and not body and etag == cached[0]:
            return cached
        doc = _parse(self.objects.where(key), body)
        with self._lock:
            self._cache[key] = (etag, doc)
        return etag, doc

    # -- writing -----------------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        self._key(record.day)
        check_usage_record(record)  # a bad record would poison the day's totals for good
        done: Future[None] = Future()
        with self._lock:
            self._queue.append((record, done))
        with self._writer:
            if not done.done():  # else a write that took it in has finished
                with self._lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        done.result()

    def _write(self, batch: list[tuple[UsageRecord, Future[None]]]) -> None:
        days: dict[str, list[tuple[UsageRecord, Future[None]]]] = {}
        for record, done in batch:
            days.setdefault(record.day, []).append((record, done))
        try:
            for day, items in days.items():
                try:
                    self._commit(day, [record for record, _ in items])
                except Exception as exc:
                    for _, done in items:
                        done.set_exception(exc)
                else:
                    for _, done in items:
                        done.set_result(None)
        finally:  # interrupted: nobody waits forever
            for _, done in batch:
                if not done.done():
                    done.set_exception(OblixError("Recording usage was interrupted."))

    def _commit(self, day: str, records: Sequence[UsageRecord]) -> None:
        key = self._key(day)
        with self._lock:
            current: tuple[str | None, Doc | None] | None = self._cache.get(key)
        for attempt in range(MAX_CONFLICTS):
            etag, doc = current if current is not None else self._read(key)
            new = _apply(doc or _empty(day), records, self.keep)
            if new is None:
                return
            try:
                new_etag = self.objects.put(key, dumps(new), if_match=etag, create=etag is None)
            except ConditionFailed:
                with self._lock:
                    self.conflicts += 1
                backoff(attempt)
                current = None
                continue
            with self._lock:
                self._cache[key] = (new_etag, new)
            return
        raise OblixError(
            f"The usage ledger's day object {self.objects.where(key)} changed under us {MAX_CONFLICTS} "
            "times in a row (too many concurrent writers); the usage was not recorded."
        )

    # -- reading -----------------------------------------------------------------------------

    def _days(self, since: date | None) -> list[str]:
        """The keys of the day objects from ``since`` on (every one when ``None``), oldest first."""
        start = f"{self.base}{since.isoformat()}" if since else ""
        keys = self.objects.list_keys(self.base, start_after=start)
        return sorted(k for k in keys if _DAY_KEY.fullmatch(k[len(self.base) :]))

    def _docs(self, since: date | None) -> list[Doc]:
        keys = self._days(since)
        found = [self._read(k) for k in keys] if len(keys) < 2 else list(self._pool().map(self._read, keys))
        return [doc for _, doc in found if doc is not None]

    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        docs = self._docs(since)
        if by is None:
            total = UsageTotals()
            for doc in docs:
                total.merge(_totals("total", doc["total"]))
            return [total]
        if by == "day":
            rows = [_totals(doc["day"], doc["total"]) for doc in docs]
            return [row for row in rows if row.requests]
        if by not in _GROUPS:
            raise OblixError(f"by must be one of model, day, session, got {by!r}.")
        groups: dict[str, UsageTotals] = {}
        for doc in docs:
            for name, values in doc[_GROUPS[by]].items():
                key = name or "(no session)"
                groups.setdefault(key, UsageTotals(key)).merge(_totals(key, values))
        return sorted(groups.values(), key=lambda t: t.key)

    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        docs = self._docs(since)
        if session_id is None:
            return sum(float(doc["total"][5]) for doc in docs)
        if not session_id:
            return 0.0
        return sum(float(doc["sessions"].get(session_id, _ZERO)[5]) for doc in docs)

    def recent(self, limit: int = 50) -> list[UsageRecord]:
        found: list[UsageRecord] = []
        for key in reversed(self._days(None)):
            if len(found) >= limit:
                break
            _, doc = self._read(key)
            if doc is None:
                continue
            found.extend(UsageRecord.from_dict(r) for r in reversed(doc["records"]))
            if doc["dropped"]:
                break  # its older records are gone: earlier days would leave a gap
        return found[: max(0, limit)]

    def repair(self) -> str:
        """Move every damaged day object aside (``<prefix>usage-damaged/<day>.json.<UTC time>``)
        so the other days count again; say which were moved."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.base.rstrip("/") + "-damaged/"
        moved = []
        for key in self._days(None):
            try:
                self._read(key)
                continue
            except OblixError:
                found = self.objects.get(key)
            if found is not None:
                target = f"{aside}{key[len(self.base) :]}.{stamp}"
                self.objects.put(target, found[0], create=True)
                self.objects.delete([key])
                moved.append(f"{self.objects.where(key)} -> {self.objects.where(target)}")
        with self._lock:
            self._cache.clear()
        if not moved:
            return f"No damaged day object in the usage ledger {self.objects.where(self.base)}."
        return "Moved the damaged usage day object(s) aside: " + "; ".join(moved) + "."

    def identity(self) -> str:
        return f"s3:{self.objects.bucket}:{self.objects.endpoint}:{self.base}"

    def close(self) -> None:
        """Forget the cached day objects (the store owns the S3 client)."""
        with self._lock:
            self._cache.clear()
