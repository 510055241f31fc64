"""Writes ``documents_index_v1.sqlite3``: an index file as the SQLite index wrote it before the term
counts (FTS5 keywords, commit 104b9db), for the migration test. Run from the repository root:

    git show 104b9db:plugins/oblix_docs/sqlite_index.py > /tmp/old_sqlite_index.py
    .venv/bin/python tests/data/make_documents_index_v1.py tests/data/documents_index_v1.sqlite3
"""

from __future__ import annotations

import importlib.util
import pydoc
import sqlite3
import sys
from pathlib import Path
from typing import Any

from oblix_core.documents.records import Chunk, DocumentEntry, Workspace


def main(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("old_sqlite_index", "/tmp/old_sqlite_index.py")
    assert spec is not None and spec.loader is not None
    old: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    out.unlink(missing_ok=True)
    index = old.SqliteDocumentIndex(out)
    index.put_workspace(Workspace(id="ws_v1", name="notes", embedder="test", dimension=4))
    for d, module in enumerate(["json", "csv", "heapq", "textwrap"]):
        text = pydoc.plain(pydoc.plaintext.document(__import__(module)))[:6000]  # type: ignore[attr-defined]
        lines = text.splitlines()
        paras = [" ".join(lines[i : i + 6]).strip() for i in range(0, len(lines), 6)][:15]
        doc = DocumentEntry(id=f"d{d}", workspace_id="ws_v1", name=f"{module}.txt", embedder="test")
        chunks = [
            Chunk(doc.id, i, p, i + 1, i + 1, None, (module.upper(), f"Part {i // 4}"))
            for i, p in enumerate(paras)
        ]
        vectors: list[list[float]] | None = [[1.0, float(i), float(d), 0.5] for i in range(len(chunks))]
        if module == "textwrap":
            vectors = None  # a document found by keywords only
        index.put_document(doc, chunks, vectors)
    index.close()
    db = sqlite3.connect(out)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("VACUUM")
    db.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
