"""Idempotency records in Redis, shared by every Oblix server and worker on the database.

One string per key, ``<prefix>{#idem:<sha256 of the key>}``, holding the record's JSON
with a ``PX`` expiry (the record's ``expires_at``): Redis forgets a key's result by itself.
Each operation is one Lua script, so a claim, a compare-and-set on the owner, or a release
is atomic on a single server and on Redis Cluster (one key per script, in its own slot).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from oblix.plugin import IdempotencyRecords, KeyedRecord, SessionCorruptedError, SessionError, key_digest

# KEYS[1] the record; ARGV[1] the new record's JSON, ARGV[2] its lifetime in ms.
_CLAIM = """
local found = redis.call('GET', KEYS[1])
if found then return found end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# ARGV[3] the owner that must hold the key.
_REPLACE = """
local found = redis.call('GET', KEYS[1])
if not found then return 0 end
if cjson.decode(found)['owner'] ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
local found = redis.call('GET', KEYS[1])
if found and cjson.decode(found)['owner'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisIdempotencyRecords(IdempotencyRecords):
    """Keyed records as Redis strings with an expiry (see the module docstring)."""

    def __init__(self, client: Any, prefix: str = "oblix:") -> None:
        self.client, self.prefix = client, prefix
        self._claim = client.register_script(_CLAIM)
        self._replace = client.register_script(_REPLACE)
        self._release = client.register_script(_RELEASE)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{{#idem:{key_digest(key)}}}"

    @staticmethod
    def _ttl_ms(record: KeyedRecord) -> int:
        return max(1, int((record.expires_at - time.time()) * 1000))

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise SessionError(
                f"Cannot {action} an idempotency record in Redis ({type(exc).__name__}: {exc}); "
                "the request was not run. Retry with the same key when Redis is reachable."
            ) from exc

    def _decode(self, key: str, found: bytes | str) -> KeyedRecord:
        try:
            return KeyedRecord.from_json(found)
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionCorruptedError(
                f"The idempotency record {self._key(key)} in Redis is damaged ({exc}). DEL it; the "
                "request it held will then run again if retried."
            ) from None

    def claim(self, key: str, record: KeyedRecord) -> KeyedRecord | None:
        with self._errors("claim"):
            found = self._claim(keys=[self._key(key)], args=[record.to_json(), self._ttl_ms(record)])
        return self._decode(key, found) if found else None

    def replace(self, key: str, record: KeyedRecord, *, owner: str) -> bool:
        with self._errors("update"):
            done = self._replace(keys=[self._key(key)], args=[record.to_json(), self._ttl_ms(record), owner])
        return bool(done)

    def release(self, key: str, *, owner: str) -> None:
        with self._errors("release"):
            self._release(keys=[self._key(key)], args=[owner])

    def get(self, key: str) -> KeyedRecord | None:
        with self._errors("read"):
            found = self.client.get(self._key(key))
        return self._decode(key, found) if found else None
