"""File session store versus the raw file operations it is built on.

Peers, in the same run on the same disk:
* append: ``open(O_APPEND) + write + fsync`` of the same JSON line (what any durable
  append must at least do);
* load: reading the same JSONL file and ``json.loads`` of every line;
* list: a naive scan that reads every session's ``meta.json`` and sorts by ``updated_at``.

and, when the OpenAI Agents SDK is installed, its ``SQLiteSession`` (the embedded store
of a peer orchestration SDK) holding the same message dicts: ``get_items()`` beside
``load`` of a 10,000-message session, ``add_items`` of one message beside an append,
with SQLite's ``synchronous=FULL`` (an fsync per commit: the file store's durability)
and at the SDK's default. Both sides run through one worker-thread hop from an event
loop, as each SDK does on its request path.

Run: ``.venv/bin/python -m benchmarks.store_bench [--sessions 10000]``. For the peer:
``.venv/bin/pip install openai-agents`` (benchmark only; not in the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks._table import median_ms, print_table, time_calls
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_file.store import MESSAGES, META, FileSessionStore

TEXT = "A typical chat message of moderate length, about a hundred characters long, give or take a few."


def raw_append(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def raw_list(root: Path, wanted: dict, limit: int) -> list[dict]:
    found = []
    for entry in os.scandir(root):
        meta_path = Path(entry.path) / META
        if entry.is_dir() and meta_path.exists():
            meta = json.loads(meta_path.read_bytes())
            if all(meta["metadata"].get(k) == v for k, v in wanted.items()):
                found.append(meta)
    found.sort(key=lambda m: m["updated_at"], reverse=True)
    return found[:limit]


def _sqlite_session(path: Path, synchronous: str | None) -> Any:
    from agents import SQLiteSession

    class Session(SQLiteSession):  # type: ignore[misc]
        @staticmethod
        def _configure_connection(conn: sqlite3.Connection) -> None:
            SQLiteSession._configure_connection(conn)
            if synchronous:
                conn.execute(f"PRAGMA synchronous={synchronous}")

    return Session("peer", str(path))


def peer_rows(tmp: Path, store: FileSessionStore, repeat: int) -> list[tuple[object, ...]]:
    """The file store beside the Agents SDK's SQLiteSession, interleaved, in one event loop."""
    try:
        import agents  # noqa: F401
    except ImportError:
        print("(openai-agents is not installed: .venv/bin/pip install openai-agents for the SQLite peer)")
        return []
    loop = asyncio.new_event_loop()
    messages = [Message("user" if i % 2 else "assistant", TEXT) for i in range(10_000)]
    sid = new_session_id()
    store.create(SessionRecord(id=sid, messages=tuple(messages)))
    rows: list[tuple[object, ...]] = []
    for synchronous in ("FULL", "NORMAL", None):
        peer = _sqlite_session(tmp / f"peer-{synchronous}.sqlite3", synchronous)
        loop.run_until_complete(peer.add_items([m.to_dict() for m in messages]))
        setting = loop.run_until_complete(asyncio.to_thread(_synchronous, peer))
        name = f"synchronous={setting}" + ("" if synchronous else " (SDK default)")
        if synchronous == "FULL":  # the load does not depend on it
            ours, theirs = _interleaved(
                loop, lambda: asyncio.to_thread(store.load, sid), peer.get_items, max(5, repeat // 4)
            )
            rows.append(("load 10,000 messages vs SQLiteSession.get_items()", ours, theirs, ours / theirs))
        one = Message("user", TEXT)
        ours, theirs = _interleaved(
            loop,
            lambda one=one: asyncio.to_thread(store.append_messages, sid, [one]),
            lambda one=one, peer=peer: peer.add_items([one.to_dict()]),
            repeat,
        )
        rows.append((f"append 1 vs SQLiteSession.add_items, {name}", ours, theirs, ours / theirs))
        peer.close()
    loop.close()
    return rows


def _synchronous(peer: Any) -> str:
    value = peer._get_connection().execute("PRAGMA synchronous").fetchone()[0]
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(value, str(value))


def _interleaved(
    loop: asyncio.AbstractEventLoop,
    ours: Callable[[], Awaitable[object]],
    theirs: Callable[[], Awaitable[object]],
    repeat: int,
) -> tuple[float, float]:
    """Median ms of ``ours`` and ``theirs``, called alternately (after one warming call each)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeat + 1):
        for side, call in enumerate((ours, theirs)):
            started = time.perf_counter()
            loop.run_until_complete(call())
            if i:
                times[side].append(time.perf_counter() - started)
    return median_ms(times[0]), median_ms(times[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = FileSessionStore(Path(tmp) / "sessions")
        raw_file = Path(tmp) / "raw.jsonl"
        sid = new_session_id()
        store.create(SessionRecord(id=sid))
        rows = []
        filled = 0
        for size in (0, 1_000, 10_000):
            while filled < size:  # grow both to the same size
                batch = [Message("user", TEXT) for _ in range(min(1000, size - filled))]
                store.append_messages(sid, batch)
                raw_append(raw_file, b"".join(json.dumps(m.to_dict()).encode() + b"\n" for m in batch))
                filled += len(batch)
            line = json.dumps(Message("user", TEXT).to_dict()).encode() + b"\n"
            oblix = median_ms(
                time_calls(lambda: store.append_messages(sid, [Message("user", TEXT)]), args.repeat)
            )
            raw = median_ms(time_calls(lambda line=line: raw_append(raw_file, line), args.repeat))
            filled += args.repeat
            rows.append((f"append 1 message at {size:,} messages", oblix, raw, oblix / raw))
        count = len(store.load(sid).messages)
        oblix = median_ms(time_calls(lambda: store.load(sid), 10))
        raw = median_ms(time_calls(lambda: raw_load(store.root / sid / MESSAGES), 10))
        rows.append((f"load a {count:,}-message session", oblix, raw, oblix / raw))
        rows += peer_rows(Path(tmp), store, args.repeat)

        for i in range(args.sessions):
            store.create(
                SessionRecord(
                    id=new_session_id(),
                    title=f"s{i}",
                    metadata={"category": ("support", "sales")[i % 2], "n": i},
                )
            )
        wanted = {"category": "support"}
        oblix = median_ms(time_calls(lambda: store.list(50, wanted), 10))
        raw = median_ms(time_calls(lambda: raw_list(store.root, wanted, 50), 3))
        rows.append((f"list_sessions(50, filter) over {args.sessions:,} sessions", oblix, raw, oblix / raw))
        rare = {"n": args.sessions - 7}
        oblix = median_ms(time_calls(lambda: store.list(50, rare), 10))
        raw = median_ms(time_calls(lambda: raw_list(store.root, rare, 50), 3))
        rows.append((f"list_sessions(50, filter matching 1) over {args.sessions:,}", oblix, raw, oblix / raw))
    print_table(
        "File session store (median ms; ratio = Oblix / raw peer, lower is better)",
        ["operation", "oblix ms", "peer ms", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
