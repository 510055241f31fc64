"""Documents on this machine (extra ``oblix[docs]``): the local embedder ``local`` (all-MiniLM-L6-v2,
shipped in this package as a GGUF file and run in-process by llama.cpp), the embedded index
``sqlite`` (one SQLite file in the Oblix home: words counted by FTS5's tokenizer and ranked by
BM25 in numpy, vectors searched with numpy) and the readers for text, Markdown, code, HTML and PDF.

Without its packages the plugin is skipped and ``oblix plugins`` says what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oblix.plugin import hookimpl, needs

needs("numpy", "llama_cpp", "pathspec", "pypdf", "charset_normalizer", install="pip install 'oblix[docs]'")

__all__ = ["make_local_embedder", "make_sqlite_index"]


def make_local_embedder(model: str | None = None, **options: Any) -> Any:
    """The in-process embedder (options: ``n_threads``)."""
    from oblix_docs.embedder import LocalEmbedder

    return LocalEmbedder(model, **options)


def make_sqlite_index(**options: Any) -> Any:
    """The embedded index (options: ``path``, default ``<oblix home>/documents/index.sqlite3``)."""
    from oblix_docs.sqlite_index import SqliteDocumentIndex

    return SqliteDocumentIndex(**options)


@hookimpl
def oblix_register_embedders(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("local", make_local_embedder)


@hookimpl
def oblix_register_document_indexes(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("sqlite", make_sqlite_index)


@hookimpl
def oblix_register_document_readers(register: Callable[[str, Callable[[], Any]], None]) -> None:
    from oblix_docs import readers

    for name, reader in readers.READERS.items():
        register(name, reader)
