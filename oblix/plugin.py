"""The plugin-author surface: everything a backend, store, agent, routing, middleware or
command plugin needs, in one module.

First-party plugins import the core only through this module (and
``oblix_core.testing`` in their tests); so should yours. Everything else under
``oblix_core`` is private and may change between releases.

>>> from oblix.plugin import hookimpl, ModelBackend, GenerationRequest, StreamChunk, Usage

Sections:

* hooks: :data:`hookimpl`, :func:`needs` (declare an optional dependency);
* model backends: :class:`ModelBackend`, :class:`ModelType`, :class:`GenerationRequest`,
  :class:`ChatMessage`, :class:`StreamChunk`, :class:`Usage` (build it from an endpoint's counts
  with :func:`provider_usage`, which drops invalid ones; :func:`usage_info` carries the note),
  and the HTTP helpers
  :func:`require`, :func:`http_library`, :func:`status_error`, :func:`connection_error`,
  :func:`describe_cause`;
* agents: :class:`BaseAgent`, :class:`AgentCheck`, :class:`AgentState`, :class:`Target`;
* session stores: :class:`SessionStore`, :class:`SessionRecord`, :class:`Message`, :class:`SessionChanges`,
  :class:`HealthStore`, :class:`IdempotencyRecords` (with :class:`KeyedRecord`,
  :class:`FileIdempotencyRecords`, :func:`key_digest`), :func:`matches_metadata`, :func:`validate_session_id`,
  :func:`parse_timestamp`, :func:`utc_now`, :func:`write_atomically`;
* usage ledgers (``SessionStore.usage_ledger()``): :class:`UsageLedger`, :class:`UsageRecord`,
  :class:`UsageTotals`, :class:`SqliteUsageLedger`, :func:`group_key`, :func:`total_by`;
* routing and middleware: :class:`RouteRequest`, :class:`RoutingPlan`, :class:`Request`,
  :func:`new_request_id`, :func:`session_is_local_only`;
* secrets: :func:`redact_url`, :func:`scrub_secrets`, :func:`remember_secret`;
* options as text: :func:`parse_flag` (a boolean from text; anything unclear is refused);
* errors: every :class:`OblixError` subclass a plugin raises;
* commands and servers: :class:`OblixClient` (use its public methods), :class:`ResponseStream`,
  :func:`command_client` and :func:`handle_errors` (they import click only when used, so
  that loading a plugin never loads the command line).
"""

from __future__ import annotations

from typing import Any

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.errors import (
    ConfigError,
    ContextWindowExceededError,
    ExchangeNotStoredError,
    InvalidSessionIdError,
    ModelError,
    ModelTimeoutError,
    NoModelAvailableError,
    OblixError,
    PermanentModelError,
    PluginError,
    SessionCorruptedError,
    SessionError,
    SessionExistsError,
    SessionNotFoundError,
    StreamInterruptedError,
    TransientModelError,
)
from oblix_core.fileio import write_atomically
from oblix_core.models.backend import (
    ChatMessage,
    GenerationRequest,
    ModelBackend,
    ModelType,
    StreamChunk,
    Usage,
)
from oblix_core.models.health import HealthStore
from oblix_core.models.transport import (
    connection_error,
    describe_cause,
    http_library,
    require,
    seconds_option,
    status_error,
)
from oblix_core.plugins.dependencies import MissingDependency, needs
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request.context import Request, new_request_id
from oblix_core.request.conversation import ResponseStream
from oblix_core.request.privacy import session_is_local_only
from oblix_core.request.routing import PREFERENCES as ROUTING_PREFERENCES
from oblix_core.request.routing import RouteRequest, RoutingPlan
from oblix_core.secrets import redact_url
from oblix_core.secrets import remember as remember_secret
from oblix_core.secrets import scrub as scrub_secrets
from oblix_core.sessions.idempotency import (
    FileIdempotencyRecords,
    IdempotencyRecords,
    KeyedRecord,
    key_digest,
)
from oblix_core.sessions.records import (
    LOCAL_ONLY_KEY,
    Message,
    SessionRecord,
    matches_metadata,
    parse_timestamp,
    utc_now,
    validate_session_id,
)
from oblix_core.sessions.store import SessionChanges, SessionStore
from oblix_core.usage.counts import MAX_TOKEN_COUNT, provider_usage, token_count, usage_info
from oblix_core.usage.ledger import UsageLedger, UsageRecord, UsageTotals, group_key, total_by
from oblix_core.usage.sqlite import SqliteUsageLedger
from oblix_core.validation import parse_flag


def command_client() -> OblixClient:
    """For ``oblix_register_commands`` plugins: a client on the store the ``oblix`` group chose
    (``--store``/``--store-option``, else ``config.toml``)."""
    from oblix_core.cli.common import make_client

    return make_client()


def handle_errors(func: Any) -> Any:
    """For command plugins: turn an :class:`OblixError` into a one-line message and exit status 1."""
    from oblix_core.cli.common import handle_errors as wrap

    return wrap(func)


__all__ = [
    "LOCAL_ONLY_KEY",
    "MAX_TOKEN_COUNT",
    "ROUTING_PREFERENCES",
    "AgentCheck",
    "AgentState",
    "BaseAgent",
    "ChatMessage",
    "ConfigError",
    "ContextWindowExceededError",
    "ExchangeNotStoredError",
    "FileIdempotencyRecords",
    "GenerationRequest",
    "HealthStore",
    "IdempotencyRecords",
    "InvalidSessionIdError",
    "KeyedRecord",
    "Message",
    "MissingDependency",
    "ModelBackend",
    "ModelError",
    "ModelTimeoutError",
    "ModelType",
    "NoModelAvailableError",
    "OblixClient",
    "OblixError",
    "PermanentModelError",
    "PluginError",
    "Request",
    "ResponseStream",
    "RouteRequest",
    "RoutingPlan",
    "SessionChanges",
    "SessionCorruptedError",
    "SessionError",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionRecord",
    "SessionStore",
    "SqliteUsageLedger",
    "StreamChunk",
    "StreamInterruptedError",
    "Target",
    "TransientModelError",
    "Usage",
    "UsageLedger",
    "UsageRecord",
    "UsageTotals",
    "command_client",
    "connection_error",
    "describe_cause",
    "group_key",
    "handle_errors",
    "hookimpl",
    "http_library",
    "key_digest",
    "matches_metadata",
    "needs",
    "new_request_id",
    "parse_flag",
    "parse_timestamp",
    "provider_usage",
    "redact_url",
    "remember_secret",
    "require",
    "scrub_secrets",
    "seconds_option",
    "session_is_local_only",
    "status_error",
    "token_count",
    "total_by",
    "usage_info",
    "utc_now",
    "validate_session_id",
    "write_atomically",
]
