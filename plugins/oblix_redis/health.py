"""Model health shared through Redis, so Oblix instances on several hosts share cooldowns.

One hash, ``<prefix>{#health}``, holds one JSON record per model and endpoint (fields
``"<model_id>|<endpoint>"``, see :mod:`oblix_core.models.health`); a single hash tag keeps it in
one slot on Redis Cluster. Each save is one ``HSET`` (the newest record wins when
instances merge), each load one ``HGETALL``: a handful of small records.

``RedisSessionStore.shared_health()`` is meant to return
``RedisHealthStore(self._client, self.options.prefix)``.
"""

from __future__ import annotations

import json
from typing import Any

from oblix.plugin import HealthStore


class RedisHealthStore(HealthStore):
    """Model health records in one Redis hash (see the module docstring)."""

    name = "redis"

    def __init__(self, client: Any, prefix: str = "oblix:") -> None:
        self.client = client
        self.key = f"{prefix}{{#health}}"

    def load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for field, raw in (self.client.hgetall(self.key) or {}).items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            try:
                value = json.loads(raw)
            except ValueError:
                continue  # a record some other writer garbled: ignore it
            if isinstance(value, dict):
                records[name] = value
        return records

    def save(self, key: str, record: dict[str, Any]) -> None:
        self.client.hset(self.key, key, json.dumps(record, allow_nan=False))
