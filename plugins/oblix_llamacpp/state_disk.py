"""The disk tier of the prompt-state cache: saved states that outlive the process.

One folder per model identity (the GGUF file's path, size and mtime, llama-cpp-python's
version and the context settings that shape the KV cache), so a state is only ever
restored into the model that produced it. Each state is one file named
``<n_tokens>-<sha256 of the tokens>.kvstate``: finding the longest saved prefix of a
prompt hashes the prompt's first ``n`` tokens once per distinct ``n`` on disk, without
reading any file. A file holds a header, the tokens (checked on load) and llama.cpp's
sequence state. Writes go to a temporary file and are renamed into place, so readers
(other processes too) see whole files or none. The folder is kept under its byte budget
by deleting the least recently used files (a hit refreshes a file's mtime). Folders are
created ``0700`` and files ``0600``: states are derived from the conversations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from oblix_llamacpp.saved_state import SavedState

if TYPE_CHECKING:
    from oblix_llamacpp.saved_state import Tokens

log = logging.getLogger(__name__)

MAGIC = b"OBLIXKV1"
SUFFIX = ".kvstate"
#: The largest header a state file may declare (ours are a few hundred bytes).
MAX_HEADER = 1 << 20
#: The default ``kv_cache_disk_bytes``.
DEFAULT_DISK_BYTES = 2 << 30
_CONTEXT_FIELDS = (
    "type_k",
    "type_v",
    "flash_attn_type",
    "offload_kqv",
    "swa_full",
    "rope_scaling_type",
    "rope_freq_base",
    "rope_freq_scale",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
)


def model_fingerprint(llama: Any, model_path: Path, n_gpu_layers: int) -> dict[str, Any]:
    """What a saved state depends on: the model file and the KV cache's settings."""
    import llama_cpp

    stat = model_path.stat()
    params = llama.context_params
    return {
        "model": str(model_path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "llama_cpp": llama_cpp.__version__,
        "n_gpu_layers": n_gpu_layers,
        "context": {f: _plain(getattr(params, f)) for f in _CONTEXT_FIELDS if hasattr(params, f)},
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | bool | str) else repr(value)


def token_hash(tokens: Tokens) -> str:
    return hashlib.sha256(tokens.astype("<i4").tobytes()).hexdigest()[:40]


class DiskStateStore:
    """Saved prompt states in ``root/<model identity>/``, at most ``capacity_bytes`` in all."""

    def __init__(self, root: Path, capacity_bytes: int, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        identity = hashlib.sha256(self.fingerprint.encode()).hexdigest()[:24]
        self.folder = root / identity
        self.capacity_bytes = capacity_bytes
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _files(self) -> list[tuple[int, str, Path]]:
        found = []
        with contextlib.suppress(OSError):
            for path in self.folder.iterdir():
                count, _, digest = path.name.removesuffix(SUFFIX).partition("-")
                if path.name.endswith(SUFFIX) and count.isdigit() and digest:
                    found.append((int(count), digest, path))
        return found

    def find(self, tokens: Tokens, at_least: int) -> SavedState | None:
        """The longest saved state whose tokens are a prefix of ``tokens`` (>= ``at_least``)."""
        hashes: dict[int, str] = {}
        matches = []
        for count, digest, path in self._files():
            if at_least <= count <= len(tokens):
                if count not in hashes:
                    hashes[count] = token_hash(tokens[:count])
                if hashes[count] == digest:
                    matches.append((count, path))
        for count, path in sorted(matches, reverse=True):
            state = self._read(path, tokens[:count])
            if state is not None:
                with contextlib.suppress(OSError):
                    os.utime(path)  # least recently used goes first
                return state
        return None

    def _read(self, path: Path, expected: Tokens) -> SavedState | None:
        """The state saved in ``path`` for ``expected``; ``None`` (and the file removed) if it is
        damaged, foreign or of any other shape: the prompt is then evaluated in full."""
        try:
            with open(path, "rb") as file:
                return self._parse(file, expected)
        except FileNotFoundError:
            return None  # removed by another process meanwhile
        except Exception as exc:  # any malformed shape, whatever it trips over: drop it
            log.warning("Prompt-state cache: ignoring and removing %s (%s)", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _parse(self, file: BinaryIO, expected: Tokens) -> SavedState:
        """Read and check a state file; ``ValueError`` says what is wrong with it."""
        if file.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a saved prompt state")
        (header_size,) = struct.unpack("<Q", file.read(8))
        if header_size > MAX_HEADER:
            raise ValueError(f"a header of {header_size} bytes")
        header = json.loads(file.read(header_size))
        if not isinstance(header, dict):
            raise ValueError(f"a header that is a JSON {type(header).__name__}, not an object")
        if header.get("fingerprint") != self.fingerprint:
            raise ValueError("saved for another model or context settings")
        count, size = header.get("n_tokens"), header.get("state_bytes")
        if type(count) is not int or type(size) is not int or size < 0 or count != len(expected):
            raise ValueError(f"a header with n_tokens={count!r}, state_bytes={size!r}")
        raw = file.read(count * 4)
        data = bytearray(file.read(size + 1))
        if len(raw) != count * 4 or len(data) != size:
            raise ValueError("truncated, or longer than its header says")
        import numpy  # here, not with the plugin (saved_state.py says why)

        tokens = numpy.frombuffer(raw, dtype="<i4").astype(numpy.intc)
        if not numpy.array_equal(tokens, expected):
            raise ValueError("its tokens do not match its name")
        return SavedState(tokens, data)

    def put(self, state: SavedState) -> None:
        """Write ``state``, drop the saved states it extends, then keep under budget."""
        name = f"{len(state.tokens)}-{token_hash(state.tokens)}{SUFFIX}"
        header = json.dumps(
            {"fingerprint": self.fingerprint, "n_tokens": len(state.tokens), "state_bytes": len(state.data)}
        ).encode()
        if len(header) + len(state.data) + state.tokens.nbytes > self.capacity_bytes:
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as file:
                file.write(MAGIC + struct.pack("<Q", len(header)) + header)
                file.write(state.tokens.astype("<i4").tobytes())
                file.write(state.data)
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            log.warning("Prompt-state cache: could not write %s (%s)", self.folder, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        for count, digest, path in self._files():
            if count < len(state.tokens) and token_hash(state.tokens[:count]) == digest:
                with contextlib.suppress(OSError):
                    path.unlink()
        self._trim()

    def remove(self, tokens: Tokens) -> None:
        with contextlib.suppress(OSError):
            (self.folder / f"{len(tokens)}-{token_hash(tokens)}{SUFFIX}").unlink()

    def _trim(self) -> None:
        entries = []
        for _, _, path in self._files():
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.capacity_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size

    def size(self) -> int:
        """Bytes held on disk."""
        total = 0
        for _, _, path in self._files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total
