"""The local embedder: all-MiniLM-L6-v2 run in-process by llama.cpp, from the GGUF file in this package.

Nothing is downloaded and nothing leaves the machine. The model (sentence-transformers'
all-MiniLM-L6-v2, Apache-2.0; 6 layers, 384 dimensions, mean pooling) was converted to
GGUF with 8-bit matrices by ``scripts/build_local_embedder.py`` (25 MB). Texts longer than
its 256 word pieces are cut there (the chunker keeps chunks below that). Calls are
serialised: one llama.cpp context is not thread-safe.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oblix.plugin import Embedder, EmbedderError

MODEL_FILE = Path(__file__).parent / "models" / "all-minilm-l6-v2-q8_0.gguf"
MODEL_NAME = "all-minilm-l6-v2"
#: The model's own limit (all-MiniLM-L6-v2 was trained on 256 word pieces).
MAX_TOKENS = 256


class LocalEmbedder(Embedder):
    """All-MiniLM-L6-v2 in-process (``local``, ``local:all-minilm-l6-v2``)."""

    dimension = 384
    is_local = True

    def __init__(self, model: str | None = None, *, n_threads: int | None = None) -> None:
        """``n_threads``: default half the CPUs, at most 4 (an ingest leaves room for the rest)."""
        if model not in (None, "", MODEL_NAME):
            raise EmbedderError(f"The local embedder ships {MODEL_NAME} only, not {model!r}.")
        self.name = f"local:{MODEL_NAME}"
        self._threads = n_threads or max(1, min(4, (os.cpu_count() or 2) // 2))
        self._llama: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            if not MODEL_FILE.is_file():
                raise EmbedderError(
                    f"The local embedding model is missing ({MODEL_FILE}); reinstall oblix[docs]."
                )
            self._llama = Llama(
                model_path=str(MODEL_FILE),
                embedding=True,
                verbose=False,
                n_ctx=512,
                n_batch=2048,
                n_ubatch=512,
                n_threads=self._threads,
                n_threads_batch=self._threads,
            )
        return self._llama

    def _clip(self, llama: Any, text: str) -> str:
        tokens = llama.tokenize(text.encode("utf-8", "replace"), add_bos=True)
        if len(tokens) <= MAX_TOKENS:
            return text
        return llama.detokenize(tokens[1 : MAX_TOKENS - 1]).decode("utf-8", "replace")

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            llama = self._model()
            clipped = [self._clip(llama, t) if t.strip() else "." for t in texts]
            vectors = llama.embed(clipped, normalize=True)
        return [list(v) for v in vectors]

    def close(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def __repr__(self) -> str:
        return f"<LocalEmbedder {self.name} dim={self.dimension}>"
