"""The plugin-author surface: everything a backend, store, agent, routing, middleware or
command plugin needs, in one module. First-party plugins import the core only through this
module (and :mod:`oblix.testing` in their tests); so should yours. Everything else under
``oblix_core`` is private and may change between releases. ``docs/plugins.md`` is the
reference: what each kind of part must implement, and every name below.

>>> from oblix.plugin import hookimpl, ModelBackend, GenerationRequest, StreamChunk, Usage

Contents
--------
Hooks:            hookimpl, needs, MissingDependency, oblix_home
Model backends:   ModelBackend, ModelType, GenerationRequest, ChatMessage, StreamChunk, Usage,
                  provider_usage, usage_info, token_count, MAX_TOKEN_COUNT
HTTP helpers:     require, http_library, status_error, connection_error, describe_cause,
                  seconds_option, retry_after
Agents:           BaseAgent, AgentCheck, AgentState, Target
Session stores:   SessionStore, SessionRecord, Message, SessionChanges, LOCAL_ONLY_KEY,
                  matches_metadata, validate_session_id, parse_timestamp, utc_now,
                  write_atomically
Shared state:     HealthStore, IdempotencyRecords, KeyedRecord, FileIdempotencyRecords,
                  key_digest
Usage ledgers:    UsageLedger, UsageRecord, UsageTotals, SqliteUsageLedger, group_key, total_by,
                  check_usage_record, InvalidUsageRecordError
Routing, middleware: RouteRequest, RoutingPlan, Request, ROUTING_PREFERENCES, new_request_id,
                  session_is_local_only, decide_local_only, LocalOnly
Documents:        Embedder, RemoteEmbedder, DocumentIndex, DocumentReader, TextBlock, Chunk, DocumentEntry,
                  SearchHit, Workspace, DocumentError, EmbedderError, UnreadableDocumentError
Secrets:          redact_url, scrub_secrets, remember_secret
Options as text:  parse_flag
Errors:           OblixError, ConfigError, PluginError, SessionError, InvalidSessionIdError,
                  SessionNotFoundError, SessionExistsError, SessionCorruptedError,
                  ExchangeNotStoredError, ModelError, TransientModelError, ModelTimeoutError,
                  PermanentModelError, ContextWindowExceededError, StreamInterruptedError,
                  NoModelAvailableError, IdempotencyKeyMismatchError, IdempotencyInFlightError
Commands, servers: OblixClient, ResponseStream, command_client, handle_errors

Notes: ``needs()`` declares an optional dependency up front, so a plugin whose package is
missing is listed as "not installed" instead of failing. ``oblix_home()`` is where a part
that keeps files puts them (the home of the client building it). ``provider_usage()``
builds a :class:`Usage` from an endpoint's counts, dropping invalid ones. ``decide_local_only``
is the core's one answer to "is this request local-only, and why". ``command_client()`` and
``handle_errors()`` import click only when used, so loading a plugin never loads the command line.
"""

from __future__ import annotations

from typing import Any

from oblix_core.agents import AgentCheck, AgentState, BaseAgent, Target
from oblix_core.client import OblixClient
from oblix_core.config.settings import oblix_home
from oblix_core.documents.errors import (
    DocumentError,
    EmbedderError,
    UnreadableDocumentError,
)
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder, RemoteEmbedder
from oblix_core.documents.records import Chunk, DocumentEntry, SearchHit, TextBlock, Workspace
from oblix_core.errors import (
    ConfigError,
    ContextWindowExceededError,
    ExchangeNotStoredError,
    IdempotencyInFlightError,
    IdempotencyKeyMismatchError,
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
    retry_after,
    seconds_option,
    status_error,
)
from oblix_core.plugins.dependencies import MissingDependency, needs
from oblix_core.plugins.hookspecs import hookimpl
from oblix_core.request.context import Request, new_request_id
from oblix_core.request.conversation import ResponseStream
from oblix_core.request.privacy import LocalOnly, session_is_local_only
from oblix_core.request.privacy import decide as decide_local_only
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
from oblix_core.usage.ledger import (
    InvalidUsageRecordError,
    UsageLedger,
    UsageRecord,
    UsageTotals,
    group_key,
    total_by,
)
from oblix_core.usage.ledger import check_record as check_usage_record
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
    "Chunk",
    "ConfigError",
    "ContextWindowExceededError",
    "DocumentEntry",
    "DocumentError",
    "DocumentIndex",
    "DocumentReader",
    "Embedder",
    "EmbedderError",
    "ExchangeNotStoredError",
    "FileIdempotencyRecords",
    "GenerationRequest",
    "HealthStore",
    "IdempotencyInFlightError",
    "IdempotencyKeyMismatchError",
    "IdempotencyRecords",
    "InvalidSessionIdError",
    "InvalidUsageRecordError",
    "KeyedRecord",
    "LocalOnly",
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
    "RemoteEmbedder",
    "Request",
    "ResponseStream",
    "RouteRequest",
    "RoutingPlan",
    "SearchHit",
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
    "TextBlock",
    "TransientModelError",
    "UnreadableDocumentError",
    "Usage",
    "UsageLedger",
    "UsageRecord",
    "UsageTotals",
    "Workspace",
    "check_usage_record",
    "command_client",
    "connection_error",
    "decide_local_only",
    "describe_cause",
    "group_key",
    "handle_errors",
    "hookimpl",
    "http_library",
    "key_digest",
    "matches_metadata",
    "needs",
    "new_request_id",
    "oblix_home",
    "parse_flag",
    "parse_timestamp",
    "provider_usage",
    "redact_url",
    "remember_secret",
    "require",
    "retry_after",
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
