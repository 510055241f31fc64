"""A test plugin for the server processes of the idempotency fault trial (a test double of a
crash, not a store of its own).

It registers the session stores ``dying_file``, ``dying_redis`` and ``dying_s3``: the real
file, Redis and S3 stores, except that after a write that stored an exchange they kill their
own process with probability ``$OBLIX_TEST_DIE_AFTER_WRITE`` (``os._exit(9)``: no cleanup,
like SIGKILL). That is the one window a random external kill rarely hits: the turn is
stored, the reply never sent and the result not yet kept under its idempotency key. It also
registers the test models of :mod:`tests.server_process`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from oblix_core import hookimpl
from oblix_core.sessions.records import Message, SessionRecord
from oblix_core.sessions.store import SessionStore
from tests import server_process


def _maybe_die() -> None:
    if random.random() < float(os.environ.get("OBLIX_TEST_DIE_AFTER_WRITE", "0")):
        os._exit(9)


def dying(cls: type[SessionStore]) -> type[SessionStore]:
    """``cls`` whose exchange writes may kill the process once they are stored."""

    class Dying(cls):  # type: ignore[valid-type,misc]
        def create(self, session: SessionRecord, *, idempotency_key: str | None = None) -> None:
            super().create(session, idempotency_key=idempotency_key)
            if session.messages:
                _maybe_die()

        def append_messages(
            self, session_id: str, messages: Sequence[Message], *, idempotency_key: str | None = None
        ) -> None:
            super().append_messages(session_id, messages, idempotency_key=idempotency_key)
            _maybe_die()

    return Dying


def _factory(module: str, name: str) -> Callable[..., SessionStore]:
    def make(**options: Any) -> SessionStore:
        import importlib

        return dying(getattr(importlib.import_module(module), name))(**options)

    return make


@hookimpl
def oblix_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("dying_file", _factory("oblix_file.store", "FileSessionStore"))
    register("dying_redis", _factory("oblix_redis.store", "RedisSessionStore"))
    register("dying_s3", _factory("oblix_s3.store", "S3SessionStore"))


oblix_register_models = server_process.oblix_register_models
