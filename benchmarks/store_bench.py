"""File session store versus the raw file operations it is built on.

Peers, in the same run on the same disk:
* append: ``open(O_APPEND) + write + fsync`` of the same JSON line (what any durable
  append must at least do);
* load: reading the same JSONL file and ``json.loads`` of every line;
* list: a naive scan that reads every session's ``meta.json`` and sorts by ``updated_at``.

Run: ``.venv/bin/python -m benchmarks.store_bench [--sessions 10000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks._table import median_ms, print_table, time_calls
from oblix_core.records import Message, SessionRecord, new_session_id
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
        ["operation", "oblix ms", "raw peer ms", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
