"""Model health: cooldowns with hysteresis, background checks, persisted and shareable.

The rules (the user guide's "Failover" section says the same):

* A model that fails a request is **cooled down**, whether or not another model of its
  kind exists: at once when it could not be reached (refused, DNS, TLS, connect or
  first-byte timeout) or when a transient failure used up its retries; after
  ``failure_threshold`` consecutive failures of any kind otherwise. Requests skip a
  cooling model while any other candidate is available; when every candidate is
  cooling down each is tried once, without retries (last resort).
* A cooling model is **checked in the background** every ``probe_interval`` seconds with
  its backend's :meth:`~oblix_core.models.backend.ModelBackend.health_check` (a TCP connect, or
  ``GET /models`` for OpenAI-compatible servers: no tokens are spent). It returns to
  service only after ``recovery_checks`` consecutive checks pass (hysteresis: a model
  that flaps between failing and passing stays out). A backend with no check returns
  after ``cooldown`` seconds. A real answer from a cooling model (last resort) returns
  it at once. ``cooldown = 0`` turns cooldowns off.
* Health **outlives the process**: it is kept in ``$OBLIX_HOME/health.json``, so the
  next ``oblix run`` skips an endpoint that just failed instead of paying its timeout
  again; a session store can share it between hosts (``SessionStore.shared_health()``,
  e.g. Redis). Only models served from an endpoint are persisted and shared, keyed by
  model id and endpoint; in-process models (llama.cpp) are this process's business.
"""

from __future__ import annotations

import abc
import atexit
import json
import logging
import operator
import os
import queue
import threading
import time
import weakref
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import filelock

from oblix_core.errors import NoModelAvailableError
from oblix_core.fileio import write_atomically

if TYPE_CHECKING:
    from oblix_core.models.backend import ModelBackend

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
READINGS_FILE = "agent-readings.json"
#: Seconds a background health check may take.
CHECK_TIMEOUT = 2.0


#: Breakers whose pending saves are flushed when the interpreter exits (a one-shot command).
_LIVE: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for breaker in list(_LIVE):
        breaker.flush(timeout=2.0)


class ModelCoolingDownError(NoModelAvailableError):
    """A model forced with ``model=`` is cooling down and ``fallback=True`` was not given."""


@attrs.define
class ModelHealth:
    """What this process knows of one model's health (times are wall-clock seconds)."""

    endpoint: str | None = None
    failures: int = 0  # consecutive failed attempts
    cooling_since: float = 0.0  # 0: not cooling
    cooling_until: float = 0.0  # for models without a health check
    reason: str = ""  # the error that cooled it (secrets already scrubbed)
    checks_passed: int = 0  # consecutive passing health checks while cooling
    last_check_at: float = 0.0
    last_check: str = ""
    updated_at: float = attrs.field(factory=time.time)

    @property
    def cooling(self) -> bool:
        return self.cooling_since > 0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelHealth | None:
        """A record read from a file or another host; ``None`` if it is not one."""
        if not isinstance(data, dict):
            return None
        names = {f.name for f in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None


class HealthStore(abc.ABC):
    """Where model health records are shared between processes (and hosts).

    Records are JSON-safe dicts keyed by ``"<model_id>|<endpoint>"``; the newest
    ``updated_at`` wins. Implementations must be safe from several threads.
    """

    name: str = ""

    @abc.abstractmethod
    def load(self) -> dict[str, dict[str, Any]]:
        """Every record."""

    @abc.abstractmethod
    def save(self, key: str, record: dict[str, Any]) -> None:
        """Replace one record."""

    def version(self) -> Hashable | None:
        """A stamp that changes whenever the records may have, read without blocking I/O (a
        file's ``stat``), or ``None`` when the store cannot tell: then every request loads."""
        return None


class JsonFile:
    """A small JSON object in a file: read whole, one key replaced atomically under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path) + ".lock", timeout=2, mode=0o600)
        #: ``time.monotonic()`` of this process's last :meth:`update` (0: none yet).
        self.last_write = 0.0

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, values: dict[str, Any]) -> None:
        """Merge ``values`` into the file (top-level keys replaced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self.read() | values
            body = json.dumps(data, allow_nan=False).encode()
            write_atomically(self.path, body, fsync_dir=False, mode=0o600)  # private to the user
        self.last_write = time.monotonic()


#: A health file changed this recently (seconds) is read again on every request.
RACY_SECONDS = 2.0


class FileHealthStore(HealthStore):
    """``$OBLIX_HOME/health.json``: shared by the processes of one machine."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.file = JsonFile(path)

    def load(self) -> dict[str, dict[str, Any]]:
        return self.file.read()

    def save(self, key: str, record: dict[str, Any]) -> None:
        self.file.update({key: record})

    def version(self) -> Hashable | None:
        """The file's inode, mtime and size (every update replaces the file); ``None`` while
        the mtime is within :data:`RACY_SECONDS` of now, since a coarse clock (or an inode
        handed back) could give a later update the same stamp: git's "racy" rule."""
        try:
            found = os.stat(self.file.path)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return None
        if abs(time.time_ns() - found.st_mtime_ns) < RACY_SECONDS * 1e9:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size)


def _key(model_id: str, endpoint: str | None) -> str:
    return f"{model_id}|{endpoint or ''}"


def model_endpoint(model: ModelBackend) -> str | None:
    """Where a model is served from (``None`` for in-process models)."""
    endpoint = model.describe().get("endpoint") or model.endpoint
    return str(endpoint) if endpoint else None


class CircuitBreaker:
    """Each model's health in this process: failures, cooldowns, background checks.

    See the module docstring for the rules. Thread-safe: requests update it from the
    event loop, the checker thread from its own thread. ``store`` persists records of
    models served from an endpoint; ``readings`` keeps the agents' last checks.
    """

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        store: HealthStore | None = None,
        *,
        recovery_checks: int = 2,
        probe_interval: float = 5.0,
        readings: JsonFile | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.store = store
        self.recovery_checks = max(1, recovery_checks)
        self.probe_interval = probe_interval
        self.readings = readings
        self._health: dict[str, ModelHealth] = {}
        self._models: dict[str, ModelBackend] = {}
        self._watched: tuple[ModelBackend, ...] = ()  # the models of the last watch(), in order
        self._endpoints: dict[str, str | None] = {}  # of the watched models, by id
        self._synced: Hashable | None = None  # the store's version last synced
        self._lock = threading.RLock()
        self._checker: threading.Thread | None = None
        self._wake = threading.Event()
        self._saves: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._writer: threading.Thread | None = None
        _LIVE.add(self)

    @classmethod
    def for_home(cls, settings: Any, home: Path, shared: HealthStore | None = None) -> CircuitBreaker:
        """The breaker a client uses: ``settings`` are its ExecutionSettings."""
        return cls(
            settings.failure_threshold,
            settings.cooldown,
            shared or FileHealthStore(Path(home) / HEALTH_FILE),
            recovery_checks=settings.recovery_checks,
            probe_interval=settings.probe_interval,
            readings=JsonFile(Path(home) / READINGS_FILE),
        )

    # -- what requests ask --------------------------------------------------------------

    @property
    def _failures(self) -> dict[str, int]:
        """Consecutive failures per model (for tests and diagnostics)."""
        with self._lock:
            return {m: h.failures for m, h in self._health.items()}

    def health(self, model_id: str) -> ModelHealth | None:
        with self._lock:
            record = self._health.get(model_id)
            return attrs.evolve(record) if record else None

    def available(self, model_id: str) -> bool:
        if model_id not in self._health:  # never failed (the usual model): no lock needed
            return True
        with self._lock:
            record = self._health.get(model_id)
            if record is None or not record.cooling or self.cooldown <= 0:
                return True
            # without a health check the model is back once the cooldown has passed
            return not self._checkable(model_id) and time.time() >= record.cooling_until

    def cooling_down(self) -> dict[str, float]:
        """Models cooling down, with an estimate of the seconds left."""
        with self._lock:
            return {m: self._seconds_left(m) for m in self._health if not self.available(m)}

    def describe(self, model_id: str) -> dict[str, Any] | None:
        """A cooling model's state for ``routing_decision`` (``None`` if it is in service)."""
        if model_id not in self._health:  # never failed (the usual model): no lock needed
            return None
        with self._lock:
            record = self._health.get(model_id)
            if record is None or self.available(model_id):
                return None
            checkable = self._checkable(model_id)
            return {
                "cooling": True,
                "since_s": round(time.time() - record.cooling_since, 1),
                "reason": record.reason,
                "returns": (
                    f"after {self.recovery_checks} consecutive passing health checks "
                    f"({record.checks_passed}/{self.recovery_checks} so far, one every "
                    f"{self.probe_interval:g}s)"
                    if checkable
                    else f"after the {self.cooldown:g}s cooldown (no health check for this backend)"
                ),
                "checks_passed": record.checks_passed,
                "last_check": record.last_check or None,
                "seconds_left_estimate": self._seconds_left(model_id),
            }

    def _seconds_left(self, model_id: str) -> float:
        record = self._health[model_id]
        if not self._checkable(model_id):
            return round(max(0.0, record.cooling_until - time.time()), 1)
        due = max(0.0, record.last_check_at + self.probe_interval - time.time())
        return round(due + (self.recovery_checks - record.checks_passed - 1) * self.probe_interval, 1)

    # -- what requests report -----------------------------------------------------------

    def record_success(self, model_id: str) -> None:
        """A real answer: the model is in service (at once, even if it was cooling)."""
        if model_id not in self._health:  # never failed: nothing to change
            return
        with self._lock:
            known = self._health.get(model_id)
            if known is None or (known.failures == 0 and not known.cooling):
                return  # nothing to change (and nothing to write)
            record = self._record(model_id)
            record.failures = 0
            record.cooling_since = record.cooling_until = 0.0
            record.checks_passed = 0
            record.reason = ""
            self._save(model_id, record)

    def record_failure(self, model_id: str, *, at_once: bool = False, error: str = "") -> None:
        """A failed attempt; cools the model down at once or past the threshold."""
        with self._lock:
            record = self._record(model_id)
            record.failures += 1
            if self.cooldown > 0 and (at_once or record.failures >= self.threshold):
                now = time.time()
                record.cooling_since = now
                record.cooling_until = now + self.cooldown
                record.checks_passed = 0
                record.last_check_at = now  # the first check comes one interval later
                record.reason = error or "failed"
                record.failures = 0
            self._save(model_id, record)
        if not self.available(model_id):
            self._start_checker()

    def reset(self, model_id: str) -> None:
        """Forget a model's failures and cooldown."""
        self.record_success(model_id)

    # -- models, persistence ----------------------------------------------------------

    def watch(self, models: Sequence[ModelBackend]) -> None:
        """Told the hooked models (their endpoints and health checks) before each routing."""
        held = self._watched  # the same models as last time (every request): nothing to learn
        if len(held) == len(models) and all(map(operator.is_, held, models)):
            return
        with self._lock:
            self._synced = None  # other models (or endpoints): their shared records are not read yet
            self._models = {m.model_id: m for m in models}
            self._endpoints = {m.model_id: model_endpoint(m) for m in models}
            for model in models:
                record = self._health.get(model.model_id)
                if record is not None:
                    record.endpoint = self._endpoints[model.model_id]
            self._watched = tuple(models)  # last: a watch() that returns early finds all set

    @property
    def shares_health(self) -> bool:
        """Whether any watched model's health is shared through the store (models with an endpoint)."""
        return self.store is not None and any(self._endpoints.values())

    def stale(self) -> bool:
        """Whether the shared store may hold records :meth:`sync` has not taken yet (cheap:
        the store's :meth:`~HealthStore.version`, no I/O that can block)."""
        if self.store is None:
            return False
        version = self.store.version()
        return version is None or version != self._synced

    def sync(self) -> None:
        """Take newer records of this process's shared models from the store."""
        if self.store is None:
            return
        try:
            version = self.store.version()  # first: a change during the load is seen next time
            stored = self.store.load()
        except Exception as exc:  # health must never break a request
            log.debug("cannot read model health from %s: %s", self.store.name, exc)  # quiet: never the cause
            return
        with self._lock:
            for model_id, endpoint in self._endpoints.items():
                theirs = ModelHealth.from_dict(stored.get(_key(model_id, endpoint))) if endpoint else None
                mine = self._health.get(model_id)
                if theirs is not None and (mine is None or theirs.updated_at > mine.updated_at):
                    theirs.endpoint = endpoint
                    self._health[model_id] = theirs
            self._synced = version
        if self.cooling_down():
            self._start_checker()

    def _record(self, model_id: str) -> ModelHealth:
        record = self._health.get(model_id)
        if record is None:
            record = self._health[model_id] = ModelHealth(self._endpoints.get(model_id))
        record.updated_at = time.time()
        return record

    def _save(self, model_id: str, record: ModelHealth) -> None:
        """Queue the record for the writer thread (the event loop never waits on the store)."""
        if self.store is None or not record.endpoint:
            return
        with self._lock:
            self._saves.put((_key(model_id, record.endpoint), record.to_dict()))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="oblix-health-writer", daemon=True
                )
                self._writer.start()

    def _write_loop(self) -> None:
        assert self.store is not None
        while True:
            try:
                key, record = self._saves.get(timeout=5.0)
            except queue.Empty:
                with self._lock:  # _save starts a new writer once this one is gone
                    if self._saves.empty():
                        self._writer = None
                        return
                continue
            try:
                self.store.save(key, record)
            except Exception as exc:
                log.debug("cannot save model health (%s) to %s: %s", key, self.store.name, exc)
            finally:
                self._saves.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued saves are written; ``False`` if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._saves.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- background checks --------------------------------------------------------------

    def _checkable(self, model_id: str) -> bool:
        model = self._models.get(model_id)
        return model is not None and model.has_health_check

    def check_due(self) -> list[str]:
        """Cooling, checkable models whose next check is due, checked now in this thread."""
        now = time.time()
        with self._lock:
            due = [
                (m, self._models[m])
                for m, r in self._health.items()
                if r.cooling and self._checkable(m) and now - r.last_check_at >= self.probe_interval
            ]
        for model_id, model in due:
            self.record_check(model_id, *model.health_check(min(CHECK_TIMEOUT, self.probe_interval)))
        return [m for m, _ in due]

    def record_check(self, model_id: str, ok: bool, detail: str) -> None:
        """One background health check of a cooling model."""
        with self._lock:
            record = self._health.get(model_id)
            if record is None or not record.cooling:
                return
            record.updated_at = record.last_check_at = time.time()
            record.last_check = f"{'passed' if ok else 'failed'}: {detail}"
            record.checks_passed = record.checks_passed + 1 if ok else 0
            if record.checks_passed >= self.recovery_checks:
                log.info("%s is back in service (%d checks passed)", model_id, record.checks_passed)
                record.cooling_since = record.cooling_until = 0.0
                record.checks_passed = record.failures = 0
            self._save(model_id, record)

    def _start_checker(self) -> None:
        with self._lock:
            if self._checker is not None and self._checker.is_alive():
                self._wake.set()
                return
            if not any(self._checkable(m) for m in self._health if not self.available(m)):
                return
            self._checker = threading.Thread(target=self._check_loop, name="oblix-health", daemon=True)
            self._checker.start()

    def _check_loop(self) -> None:
        """Check cooling models until none is left (then the thread ends)."""
        while True:
            self.check_due()
            with self._lock:
                waiting = [r for m, r in self._health.items() if r.cooling and self._checkable(m)]
                if not waiting:
                    self._checker = None
                    return
                next_due = min(r.last_check_at for r in waiting) + self.probe_interval
            self._wake.wait(max(0.01, next_due - time.time()))
            self._wake.clear()
