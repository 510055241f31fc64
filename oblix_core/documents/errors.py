"""The errors a user can cause with documents, each saying what to do."""

from __future__ import annotations

from oblix_core.errors import OblixError


class DocumentError(OblixError):
    """Base class of document and retrieval errors."""


class WorkspaceNotFoundError(DocumentError):
    """No workspace with that id or name exists."""


class DocumentNotFoundError(DocumentError):
    """No document with that id exists in the workspace."""


class UnreadableDocumentError(DocumentError):
    """A file cannot be read as text (binary, unknown type, bad encoding, unsafe path)."""


class EmbedderError(DocumentError):
    """An embedder failed (down, refused, wrong answer); nothing of that batch was written."""


class EmbedderMismatchError(DocumentError):
    """A workspace holds vectors of another embedder: re-embed it instead of mixing."""


class DocumentsNotInstalledError(DocumentError):
    """The documents extra is missing."""
