"""A retried request is answered once: ``execute(..., idempotency_key=...)`` and the server's
``Idempotency-Key`` header.

The contract (Stripe's, and the IETF httpapi draft "The Idempotency-Key HTTP Header
Field"): the first request with a key runs as usual and its result is kept under the key
for ``ttl`` (24 h by default) in the session store's :class:`IdempotencyRecords`, so every
worker and server on that store sees it. A repeat with the same key and the same request
gets the first result back without calling a model, storing or counting usage again; with
another request it fails with :class:`IdempotencyKeyMismatchError` naming what differs;
while the first still runs, the repeat waits up to ``wait`` seconds, then fails with
:class:`IdempotencyInFlightError` (the server's 409 with ``Retry-After``).

The request id (and so the store's own idempotency key for the append, and the usage
ledger's request-id marker) and the stored messages' ids are derived from the key, so a
process that died after storing the exchange but before recording the result leaves a
trace: the request that takes over its expired claim finds the exchange in the session and
answers from it instead of generating again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from oblix_core.errors import (
    IdempotencyClaimLostError,
    IdempotencyInFlightError,
    IdempotencyKeyMismatchError,
    OblixError,
)
from oblix_core.sessions.idempotency import DEFAULT_TTL_S, IdempotencyRecords, KeyedRecord
from oblix_core.sessions.records import Message, SessionRecord, new_message_id_pair, random_hex

if TYPE_CHECKING:
    from oblix_core.request.context import Request
    from oblix_core.request.execution import ExecutionSettings
    from oblix_core.usage.ledger import UsageRecord

log = logging.getLogger(__name__)

#: A claim's lease when no first-token timeout bounds the wait for a model: a running request
#: renews it as its answer streams; a claim whose lease passed belongs to a process that died,
#: and a retry may take it over. With a first-token timeout T the lease is ``2 + 1.5 T`` s
#: (182 s with the default 120 s): a live request always renews before it lapses.
LEASE_S = 120.0


def lease_for(first_token_timeout: float | None) -> float:
    """The lease of a claim: longer than the longest wait for a model's first token."""
    return 2.0 + 1.5 * (first_token_timeout if first_token_timeout is not None else LEASE_S)


#: How long a repeat waits for the first request with its key before the 409.
DEFAULT_WAIT_S = 30.0
MAX_KEY_LENGTH = 255


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise OblixError(
            f"Invalid idempotency key {key!r}: use 1-{MAX_KEY_LENGTH} printable characters, "
            "e.g. a UUID made once per logical request and sent again with each retry."
        )
    return key


def request_id_for(key: str, epoch: str = "") -> str:
    """The request id of every try of the request with ``key`` (so the store and the ledger
    see one request however often it is sent); ``epoch``: its claim's (a key used again after
    its record expired is another request, with another id)."""
    text = key if not epoch else f"{key}\0{epoch}"
    return (
        "req_"
        + hashlib.sha256(b"oblix-idempotency\0" + text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    )


def message_ids(request_id: str) -> tuple[str, str]:
    """The ids of the user and assistant messages an idempotent request stores."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()
    return f"msg_{digest[:32]}", f"msg_{digest[32:]}"


def exchange_ids(request_id: str, keyed: bool, partial: bool) -> tuple[str, str, str]:
    """The user and assistant message ids of an exchange, and the store's key for its write.

    A keyed request's complete answer gets ids derived from the request id (a retry finds it;
    a store applies the write once). A partial one (interrupted) gets fresh ids and a write key
    of its own, so that the retry's complete answer is stored beside it, not taken for a repeat
    of it (a store that honours write keys would drop it) nor found as the answer. An unkeyed
    request's write key is its own too: a request id the caller gave may repeat, and each of
    those answers is stored.
    """
    if keyed and not partial:
        return (*message_ids(request_id), request_id)
    asked, answered = new_message_id_pair()
    return asked, answered, f"{request_id}.interrupted-{random_hex()[:8]}" if keyed else answered


def fingerprint(fields: dict[str, Any]) -> dict[str, str]:
    """Per-field digests of a request, so a mismatch can name the fields that differ."""
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]
        for name, value in fields.items()
    }


class Claim:
    """One request's hold on its idempotency key: :meth:`begin` first, then exactly one of
    :meth:`complete` or :meth:`release`."""

    def __init__(
        self,
        records: IdempotencyRecords,
        key: str,
        fields: dict[str, Any],
        *,
        ttl: float = DEFAULT_TTL_S,
        wait: float | None = None,
        lease: float | None = None,
    ) -> None:
        self.records, self.key, self.ttl = records, key, ttl
        self.lease = lease_for(None) if lease is None else lease
        self.wait = DEFAULT_WAIT_S if wait is None else wait
        self.fingerprint = fingerprint(fields)
        self.owner = random_hex()
        #: The request's generation under the key (see :attr:`KeyedRecord.epoch`).
        self.epoch = random_hex()[:16]
        self.taken_over = False
        self._renewed = 0.0

    def _running(self, lease: float | None = None) -> KeyedRecord:
        now = time.time()
        lease_until = now + self.lease if lease is None else lease
        return KeyedRecord(
            "running", self.fingerprint, self.owner, lease_until, now + self.ttl, epoch=self.epoch
        )

    @property
    def request_id(self) -> str:
        """The request id of this request's every try (:func:`request_id_for` with the epoch)."""
        return request_id_for(self.key, self.epoch)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.records.blocking:
            return fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def begin(self) -> dict[str, Any] | None:
        """Claim the key: ``None`` when this request should run, else the first result to replay.

        Raises :class:`IdempotencyKeyMismatchError` or, after waiting, :class:`IdempotencyInFlightError`.
        """
        deadline, pause = time.monotonic() + self.wait, 0.05
        while True:
            found = await self._call(self.records.claim, self.key, self._running())
            if found is None:
                self._renewed = time.monotonic()
                return None
            self._check_same(found)
            if found.state == "done":
                self.epoch = found.epoch
                return dict(found.result or {})
            if found.lease_until <= time.time():  # its process died or it failed: take the claim over
                ours, self.epoch = self.epoch, found.epoch  # the same request: the same request id
                if await self._call(self.records.replace, self.key, self._running(), owner=found.owner):
                    self.taken_over, self._renewed = True, time.monotonic()
                    return None
                self.epoch = ours
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdempotencyInFlightError(
                    f"A request with idempotency key {self.key!r} is still running; retry after it "
                    "ends (its result is then replayed).",
                    retry_after=max(1.0, min(found.lease_until - time.time(), 5.0)),
                )
            await anyio.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def _check_same(self, found: KeyedRecord) -> None:
        differ = tuple(
            sorted(
                k
                for k in {*found.fingerprint, *self.fingerprint}
                if found.fingerprint.get(k) != self.fingerprint.get(k)
            )
        )
        if differ:
            raise IdempotencyKeyMismatchError(
                f"Idempotency key {self.key!r} was first used for a different request (it differs in: "
                f"{', '.join(differ)}). Use a new key for a new request.",
                fields=differ,
            )

    async def renew(self, *, force: bool = False) -> None:
        """Extend the lease while the answer streams (at most every quarter lease unless
        ``force``). Raises :class:`IdempotencyClaimLostError` when a retry took the claim over
        (this try stalled past its lease): its answer must not be stored."""
        if not force and time.monotonic() - self._renewed < self.lease / 4:
            return
        self._renewed = time.monotonic()
        if await self._quietly("renew", self._running()) is False:
            raise IdempotencyClaimLostError(
                f"This try of the request with idempotency key {self.key!r} stalled past its "
                f"{self.lease:g} s lease and a retry took it over; this answer is not stored. Retry "
                "with the same key to get the answer of the try that took over.",
                retry_after=1.0,
            )

    async def complete(self, result: dict[str, Any]) -> None:
        now = time.time()
        done = KeyedRecord("done", self.fingerprint, self.owner, now, now + self.ttl, result, self.epoch)
        await self._quietly("complete", done)

    async def release(self) -> None:
        """Let a retry run the request again at once (this one failed before its complete answer
        was stored): the lease ends now, and the retry takes the claim over — with this request's
        id, so it finds anything this try stored after all (a write reported failed that landed),
        and another request with the key is still refused until the record expires."""
        await self._quietly("release", self._running(lease=0.0))

    async def forget(self) -> None:
        """Remove the claim: for a request that failed before any model ran, on a claim it made
        itself (nothing can be in the session or the ledger), so that the key is free again."""
        await self._quietly("forget", None)

    async def _quietly(self, action: str, record: KeyedRecord | None) -> bool | None:
        """Put ``record`` (``None``: remove the claim) if this claim still holds the key
        (``False`` if not). A store that fails here must not fail the request, nor hide how it
        ended (an answer, an error that carries one): the failure is logged, ``None`` returned,
        and the lease lapses by itself, after which a retry takes the claim over and answers
        from the session or runs again."""
        try:
            if record is None:
                await self._call(self.records.release, self.key, owner=self.owner)
                return True
            return bool(await self._call(self.records.replace, self.key, record, owner=self.owner))
        except OblixError as exc:
            log.warning("Could not %s an idempotency claim (%s); its lease will lapse.", action, exc)
            return None


def replayed(result: dict[str, Any]) -> dict[str, Any]:
    """A stored result as a replay returns it: the same answer, marked ``replayed``."""
    metrics = dict(result.get("metrics") or {})
    metrics["replayed"] = True
    return result | {"metrics": metrics}


def stored_answer(messages: tuple[Message, ...], request_id: str) -> Message | None:
    """The complete assistant message a try of ``request_id`` stored (found by its derived id;
    never an interrupted partial), if any."""
    _, answer_id = message_ids(request_id)
    return next(
        (m for m in reversed(messages) if m.id == answer_id and not (m.metrics or {}).get("interrupted")),
        None,
    )


def session_id_for(request_id: str) -> str:
    """The id of the new session an idempotent request without ``session_id`` creates, so
    that a retry finds the session the first try stored."""
    return str(uuid.UUID(hashlib.sha256(request_id.encode() + b"/session").hexdigest()[:32], version=4))


def request_fields(request: Request) -> dict[str, Any]:
    """What makes two tries the same request (compared field by field); the workspaces a
    request draws on count only when it names one (so older records still match)."""
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "session_id": request.session_id,
        "model": request.model,
        "system": request.system,
        "options": request.options,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "local_only": request.local_only,
        "preference": request.preference,
        "fallback": request.fallback,
        "store": request.store,
        "history": [attrs.asdict(m) for m in request.history or ()],
    }
    if request.retrieval is not None:
        fields["workspaces"] = sorted(request.retrieval.refs)
    return fields


class Once:
    """One idempotent request on the request path: claim, replay, renew, complete or release."""

    def __init__(self, claim: Claim, request: Request) -> None:
        self.claim, self.request = claim, request
        #: The result to return instead of running (a replay), else ``None``.
        self.replay: dict[str, Any] | None = None
        #: Set by the request path once the complete exchange is in the session (an
        #: interrupted partial does not count): the claim is then never released.
        self.stored = False
        #: The claim was completed or released (or there is none to settle: a replay).
        self.settled = False
        #: Set by the request path before routing: from then on a model may run (and store or
        #: record something), so a failed request's claim is released, never forgotten.
        self.ran = False

    @classmethod
    async def start(
        cls,
        records: IdempotencyRecords | None,
        request: Request,
        fields: dict[str, Any],
        settings: ExecutionSettings | None = None,
    ) -> Once | None:
        """``None`` for a request without a key; else claimed, or holding the replay.
        ``settings``: ``idempotency_ttl`` and ``idempotency_wait`` (``[execution]``)."""
        if request.idempotency_key is None or records is None:
            return None
        ttl = settings.idempotency_ttl if settings is not None else DEFAULT_TTL_S
        wait = settings.idempotency_wait if settings is not None else None
        lease = lease_for(settings.first_token_timeout) if settings is not None else None
        claim = Claim(records, request.idempotency_key, fields, ttl=ttl, wait=wait, lease=lease)
        once = cls(claim, request)
        first = await once.claim.begin()
        request.request_id = once.claim.request_id
        if first is not None:
            once.replay, once.settled = replayed(first), True
            request.request_id = str(first.get("request_id") or request.request_id)
        return once

    async def recover(self, session: SessionRecord) -> bool:
        """After taking over a dead process's claim: the exchange it stored, if any, is the
        answer (``True`` when one was found and is now the replay)."""
        if not self.claim.taken_over or self.replay is not None:
            return False
        answer = stored_answer(session.messages, self.request.request_id)
        if answer is None:
            return False
        result = {
            "response": answer.content,
            "model_id": answer.model_id,
            "session_id": session.id,
            "request_id": self.request.request_id,
            "metrics": dict(answer.metrics or {}),
            "agent_checks": {},
            "routing_decision": {"rule": "replay", "reason": "answered by an earlier try of this request"},
        }
        self.settled = True
        await self.claim.complete(result)
        self.replay = replayed(result)
        return True

    async def renew(self) -> None:
        await self.claim.renew()

    def account(self, usage: UsageRecord, metrics: dict[str, Any]) -> UsageRecord:
        """The usage record of this try's answer. A try that took the claim over and answered
        with a cloud model records it as ``<request id>.retry-<hex>`` (the try before it may
        have recorded its own answer under the request id, then failed to store it or died:
        both were paid for, both count), named in ``metrics["usage_id"]`` so that a replay
        offers that record again, not another. A local answer costs nothing: the turn counts
        once, under the request id."""
        if not self.claim.taken_over or usage.local:
            return usage
        metrics["usage_id"] = f"{usage.request_id}.retry-{random_hex()[:8]}"
        return attrs.evolve(usage, request_id=metrics["usage_id"])

    async def confirm(self, superseded: Callable[[], None] | None = None) -> None:
        """Before the exchange is stored: this try must still hold the claim. If a retry took it
        over (this try's reader stalled past the lease), ``superseded()`` records what this try
        spent, and :class:`IdempotencyClaimLostError` is raised: nothing is stored or kept."""
        try:
            await self.claim.renew(force=True)
        except IdempotencyClaimLostError:
            self.settled = True  # the claim is the other try's: neither completed nor released
            if superseded is not None:
                superseded()
            raise

    async def finish(self, result: dict[str, Any] | None) -> None:
        """Once per request: keep the result under the key; or, when the request failed before
        its complete exchange was stored, let a retry run it again. A request that stored its
        exchange and then failed keeps its claim: after the lease a retry answers from the
        session."""
        if self.settled:
            return
        self.settled = True
        if result is not None:
            await self.claim.complete(result)
        elif not self.ran and not self.claim.taken_over:
            await self.claim.forget()
        elif not self.stored:
            await self.claim.release()
