"""Every public Oblix error: ``from oblix.errors import BudgetExceededError``.

All are :class:`OblixError` subclasses whose message says what was wrong and what to do.
Catch :class:`OblixError` for any of them, or a family: :class:`ConfigError` (arguments,
``config.toml``, options), :class:`PluginError`, :class:`SessionError`, :class:`ModelError`
(:class:`TransientModelError` is worth a retry, :class:`PermanentModelError` is not) and
:class:`NoModelAvailableError` (no candidate could answer; :class:`BudgetExceededError`
and :class:`ModelCoolingDownError` say why), :class:`DocumentError` (documents and workspaces).

A plugin's own errors subclass one of these families (the file store's ``FileStoreError``,
exported by ``oblix_file``, is a :class:`SessionError`), so catching the family catches them.
"""

from oblix_core.config.templates import TemplateError
from oblix_core.documents.errors import (
    DocumentError,
    DocumentNotFoundError,
    DocumentsNotInstalledError,
    EmbedderError,
    EmbedderMismatchError,
    UnreadableDocumentError,
    WorkspaceNotFoundError,
)
from oblix_core.errors import (
    ConfigError,
    ContextWindowExceededError,
    ExchangeNotStoredError,
    IdempotencyClaimLostError,
    IdempotencyInFlightError,
    IdempotencyKeyMismatchError,
    InvalidSessionDocumentError,
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
from oblix_core.fields import InvalidSetting
from oblix_core.models.health import ModelCoolingDownError
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.usage.gate import BudgetGateBusyError
from oblix_core.usage.ledger import InvalidUsageRecordError, LedgerDamagedError

__all__ = [
    "BudgetExceededError",
    "BudgetGateBusyError",
    "ConfigError",
    "ContextWindowExceededError",
    "DocumentError",
    "DocumentNotFoundError",
    "DocumentsNotInstalledError",
    "EmbedderError",
    "EmbedderMismatchError",
    "ExchangeNotStoredError",
    "IdempotencyClaimLostError",
    "IdempotencyInFlightError",
    "IdempotencyKeyMismatchError",
    "InvalidSessionDocumentError",
    "InvalidSessionIdError",
    "InvalidSetting",
    "InvalidUsageRecordError",
    "LedgerDamagedError",
    "ModelCoolingDownError",
    "ModelError",
    "ModelTimeoutError",
    "NoModelAvailableError",
    "OblixError",
    "PermanentModelError",
    "PluginError",
    "SessionCorruptedError",
    "SessionError",
    "SessionExistsError",
    "SessionNotFoundError",
    "StreamInterruptedError",
    "TemplateError",
    "TransientModelError",
    "UnreadableDocumentError",
    "WorkspaceNotFoundError",
]
