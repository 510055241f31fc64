"""``[documents]`` of ``config.toml``: which document index a client opens, the options passed to
its factory, and the embedder of new workspaces. Read once by :mod:`oblix_core.config.settings`
(like the other settings classes, it checks its own values); used by
:class:`~oblix_core.documents.api.DocumentsAPI` when a client first opens its documents.

A DSN can hold a password, so it need not be written in the file: an option ``NAME_env = "VAR"``
is passed to the index as ``NAME``, read from the environment variable ``VAR`` when the index is
opened (the way ``[[models]] api_key_env`` is), and every value read so is remembered as a
secret (masked in error texts); reprs mask secret-looking options and URL passwords.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from oblix_core import fields
from oblix_core.errors import ConfigError
from oblix_core.secrets import MASK, redact_url, remember

#: An option of ``[documents] options`` whose name ends so names an environment variable.
ENV_SUFFIX = "_env"
#: Option names whose values are secrets: masked in reprs.
_SECRET_WORDS = ("dsn", "password", "passwd", "secret", "token", "key", "url")


def _index_options(value: Any) -> bool:
    """``[documents] options``: a table whose ``NAME_env`` entries name environment variables.

    Raises :class:`~oblix_core.fields.InvalidSetting` itself, naming the one bad entry, so the
    message never quotes the other options (a DSN may hold a password)."""
    if not isinstance(value, dict):
        shown = redact_url(value) if isinstance(value, str) else value
        raise fields.InvalidSetting("options", "a table of the index's options", shown)
    for key, entry in value.items():
        if not key.endswith(ENV_SUFFIX):
            continue
        if not (isinstance(entry, str) and entry.strip()):
            raise fields.InvalidSetting(f"options.{key}", "the name of an environment variable", entry)
        if key[: -len(ENV_SUFFIX)] in value:
            base = key[: -len(ENV_SUFFIX)]
            raise fields.InvalidSetting(
                f"options.{key}", f"left out when options.{base} is given (keep one of the two)", entry
            )
    return True


def _shown_options(options: dict[str, Any]) -> str:
    """``options`` for a repr: secret-looking values masked, URLs without their password."""

    def shown(key: str, value: Any) -> Any:
        if key.endswith(ENV_SUFFIX) or not isinstance(value, str):
            return value
        return MASK if any(w in key.lower() for w in _SECRET_WORDS) else redact_url(value)

    return repr({k: shown(k, v) for k, v in options.items()})


@attrs.frozen
class DocumentsSettings:
    """``[documents]``: the document index (``sqlite``, ``pgvector`` or a plugin's), the options
    passed to its factory, and the embedder of new workspaces (``set_default_embedding_model``
    overrides it per client). An option ``NAME_env = "VAR"`` is passed as ``NAME`` read from the
    environment variable ``VAR`` when the index is opened, so a DSN's password need not be in the
    file; the ``pgvector`` index reads ``OBLIX_PGVECTOR_DSN`` when neither ``dsn`` nor ``dsn_env``
    is given."""

    index: str = attrs.field(
        default="sqlite", validator=fields.text("a document index (sqlite, pgvector...)")
    )
    embedder: str = attrs.field(
        default="local", validator=fields.text('an embedder, e.g. "local" or "openai:text-embedding-3-small"')
    )
    options: dict[str, Any] = attrs.field(
        factory=dict,
        validator=fields.Rule("a table of the index's options", _index_options),
        repr=_shown_options,
    )


#: The environment variable the ``pgvector`` index reads its DSN from by default.
PGVECTOR_DSN_ENV = "OBLIX_PGVECTOR_DSN"


def index_arguments(settings: DocumentsSettings, where: str = "config.toml") -> dict[str, Any]:
    """The index factory's keyword arguments for ``settings``: each ``NAME_env`` read from the
    environment into ``NAME`` (remembered as a secret). An unset variable is a :class:`ConfigError`
    naming the variable, never a value."""
    options = {k: v for k, v in settings.options.items() if not k.endswith(ENV_SUFFIX)}
    envs = {k[: -len(ENV_SUFFIX)]: v for k, v in settings.options.items() if k.endswith(ENV_SUFFIX)}
    if settings.index == "pgvector" and "dsn" not in options:
        envs.setdefault("dsn", PGVECTOR_DSN_ENV)
    for name, variable in envs.items():
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(
                f"{where}: [documents] index {settings.index!r} reads its {name} from the environment "
                f"variable {variable}, which is not set. Set it (e.g. export {variable}=...) or change "
                f"[documents] options.{name}{ENV_SUFFIX}."
            )
        redact_url(value)  # remembers a URL's password, so no error text shows it
        remember(value)
        options[name] = value
    return options
