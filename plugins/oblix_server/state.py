"""What every endpoint shares: the client, the settings and the concurrency limiter."""

from __future__ import annotations

import time

import attrs

from oblix.plugin import OblixClient
from oblix_server.limits import ConcurrencyLimiter
from oblix_server.settings import ServerSettings


@attrs.define
class ServerState:
    """One per app; kept in ``app.state.oblix``."""

    client: OblixClient
    settings: ServerSettings
    limiter: ConcurrencyLimiter
    started: int = attrs.field(factory=lambda: int(time.time()))

    @classmethod
    def create(cls, client: OblixClient, settings: ServerSettings) -> ServerState:
        limiter = ConcurrencyLimiter(settings.max_concurrency, settings.queue_size, settings.queue_timeout)
        return cls(client, settings, limiter)
