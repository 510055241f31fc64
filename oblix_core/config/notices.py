"""Notices said once per Oblix home, not on every run (e.g. "no price for cloud model X").

What was said is remembered in ``notices.json`` in the home, so a later run, another
process or the server does not repeat it; within a process a notice is said once per home
even when the file cannot be written (a read-only home says it once per process).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from oblix_core.fileio import write_atomically

NOTICES_FILE = "notices.json"

log = logging.getLogger("oblix")
_SAID: set[tuple[str, str]] = set()
_LOCK = threading.Lock()


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def notice_once(home: Path, key: str, message: str) -> bool:
    """Log ``message`` (a warning) unless the notice ``key`` was already given in ``home``.

    Blocking (reads and writes a small file): call it from a worker thread in async code.
    Returns whether the notice was given now.
    """
    with _LOCK:
        if (str(home), key) in _SAID:
            return False
        _SAID.add((str(home), key))
        path = home / NOTICES_FILE
        said = _read(path)
        if key in said:
            return False
        said[key] = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            home.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(said, indent=1, sort_keys=True).encode("utf-8"), mode=0o600)
        except OSError:
            pass  # said once per process instead
    log.warning(message)
    return True
