"""Defaults and checks for the llama.cpp backend's thread and prompt-cache options."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import psutil

from oblix.plugin import ConfigError


def default_threads(physical: int | None = None) -> int:
    """Every physical core but one, at least one: the fixed default before adaptive threads
    (:mod:`oblix_llamacpp.threads`), kept as the benchmarks' "today's default" peer.

    llama.cpp's threads spin while they wait for each other, so one more thread than
    there are free cores costs far more than the thread brings: on a 2-core machine
    with one other busy process, 2 threads fell to a fraction of the speed of 1 thread
    (see benchmarks/README.md, "llama.cpp threads"). Leaving a core to the rest of the
    machine (the event loop, the agents, other programs) keeps the speed steady.
    """
    cores = physical if physical is not None else psutil.cpu_count(logical=False) or 1
    return max(1, cores - 1)


def thread_option(value: object) -> int | None:
    """``n_threads``: a whole number of at least 1 (fixed), or None/``"auto"`` (adaptive: None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"n_threads must be a whole number of at least 1, or 'auto' (the default: chosen per "
            f"request from the machine's load), got {value!r}."
        )
    return value


def byte_option(name: str, value: object, default: int) -> int:
    """A byte budget: a non-negative integer (0 turns the tier off), or None for the default."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a number of bytes (0 or more), got {value!r}.")
    return value


def default_cache_dir() -> Path:
    """Where ``kv_cache_dir=True`` keeps saved prompt states: the user cache directory."""
    return Path(platformdirs.user_cache_dir("oblix")) / "llama-states"


def cache_dir_option(value: object) -> Path | None:
    """``kv_cache_dir``: None/False (no disk tier), True (the default folder) or a folder path."""
    if value is None or value is False:
        return None
    if value is True:
        return default_cache_dir()
    if isinstance(value, str | Path) and str(value).strip():
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"kv_cache_dir must be a folder, but {path} is a file; pass a folder path or true."
            )
        return path
    raise ConfigError(
        f"kv_cache_dir must be a folder path, true (the user cache folder) or false, got {value!r}."
    )
