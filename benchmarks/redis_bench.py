"""Redis session store versus raw redis-py doing the minimal equivalent, in one run.

Peers, on the same server and the same client library:
* append: one ``RPUSH`` of the same JSON message (one round trip);
* load: ``LRANGE 0 -1`` of a list of the same messages and ``json.loads`` of each;
* load_recent: ``LRANGE -50 -1`` and ``json.loads`` of each;
* list with a filter: without an index, what a raw client must do: SCAN the sessions'
  hashes, read each one's metadata, filter and sort.

Round trips are counted at the socket: every ``send_packed_command`` of redis-py is one
request/response exchange (a pipeline is one).

Run: ``.venv/bin/python -m benchmarks.redis_bench [--sessions 10000] [--repeat 2000]``
(it starts a private ``redis-server`` on loopback, without persistence, so that both
sides measure the protocol and the server's work rather than the disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.connection

import oblix_redis.codec as codec
import oblix_redis.lua as lua
from benchmarks._table import median_ms, p99_ms, print_table, time_calls
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_redis.store import RedisSessionStore

TEXT = "A typical chat message of moderate length, about a hundred characters long, give or take a few."
SENT = [0]


def _count_round_trips() -> None:
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        SENT[0] += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]


def round_trips(func: Callable[[], object]) -> int:
    """Round trips of one call of ``func`` (after a first, warming call: scripts loaded)."""
    func()
    before = SENT[0]
    func()
    return SENT[0] - before


@contextmanager
def private_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        args = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", folder]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def interleaved(
    a: Callable[[], object], b: Callable[[], object], repeat: int
) -> tuple[list[float], list[float]]:
    """Timings of ``a`` and ``b`` called alternately (same conditions for both)."""
    first: list[float] = []
    second: list[float] = []
    for _ in range(repeat):
        first += time_calls(a, 1)
        second += time_calls(b, 1)
    return first, second


def row(name: str, oblix: list[float], raw: list[float], trips: tuple[int, int]) -> tuple[object, ...]:
    ratio = median_ms(oblix) / median_ms(raw)
    return (name, median_ms(oblix), p99_ms(oblix), median_ms(raw), p99_ms(raw), ratio, *trips)


def grow(store: RedisSessionStore, raw: redis.Redis, sid: str, key: str, size: int) -> None:
    for start in range(0, size, 1000):
        batch = [Message("user", TEXT) for _ in range(min(1000, size - start))]
        store.append_messages(sid, batch)
        raw.rpush(key, *(json.dumps(m.to_dict()) for m in batch))


def generic_append(store: RedisSessionStore, raw: redis.Redis, sid: str) -> Callable[[], object]:
    """One append as last round's store made it: the generic ``SINGLE_APPEND`` script, with
    the index prefix, id and TTL as arguments and a two-element reply (same server work)."""
    script = raw.register_script(lua.SINGLE_APPEND)
    keys = [f"{store.options.prefix}{{{sid}}}:"]

    def append() -> object:
        message = Message("user", TEXT)
        stamp = message.timestamp
        args = [store._ix, sid, "0", os.urandom(8).hex(), codec.score(stamp), stamp]
        return script(keys=keys, args=[*args, codec.encode_message(message)])

    return append


def bench_messages(store: RedisSessionStore, raw: redis.Redis, repeat: int) -> list[tuple[object, ...]]:
    rows = []
    sid, key = new_session_id(), f"raw:{new_session_id()}"
    store.create(SessionRecord(id=sid))
    line = json.dumps(Message("user", TEXT).to_dict())
    one = [Message("user", TEXT)]
    store.append_messages(sid, one)  # warm: connections open, scripts loaded
    raw.rpush(key, line)
    for size in (0, 10_000):
        grow(store, raw, sid, key, size)
        trips = (
            round_trips(lambda: store.append_messages(sid, one)),
            round_trips(lambda: raw.rpush(key, line)),
        )
        oblix, peer = interleaved(
            lambda: store.append_messages(sid, one), lambda: raw.rpush(key, line), repeat
        )
        rows.append(row(f"append 1 message (session of {size:,}+)", oblix, peer, trips))
    generic = generic_append(store, raw, sid)
    trips = (round_trips(generic), round_trips(lambda: raw.rpush(key, line)))
    before, peer = interleaved(generic, lambda: raw.rpush(key, line), repeat)
    rows.append(row("  same, last round's generic script", before, peer, trips))
    for size in (1_000, 10_000):
        sid, key = new_session_id(), f"raw:{new_session_id()}"
        store.create(SessionRecord(id=sid))
        grow(store, raw, sid, key, size)

        def load_raw(key: str = key) -> list[dict[str, Any]]:
            return [json.loads(item) for item in raw.lrange(key, 0, -1)]

        trips = (round_trips(lambda sid=sid: store.load(sid)), round_trips(load_raw))
        oblix, peer = interleaved(lambda sid=sid: store.load(sid), load_raw, 20)
        rows.append(row(f"load a {size:,}-message session", oblix, peer, trips))

    def recent_raw() -> list[dict[str, Any]]:
        return [json.loads(item) for item in raw.lrange(key, -50, -1)]

    trips = (round_trips(lambda: store.load_recent(sid, 50)), round_trips(recent_raw))
    oblix, peer = interleaved(lambda: store.load_recent(sid, 50), recent_raw, repeat)
    rows.append(row("load_recent(50) of 10,000 messages", oblix, peer, trips))
    return rows


def raw_list(raw: redis.Redis, prefix: str, wanted: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The index-free way: SCAN every session, read its metadata and header, filter, sort."""
    keys = list(raw.scan_iter(match=f"{prefix}{{*}}:md", count=1000))
    pipe = raw.pipeline(transaction=False)
    for md_key in keys:
        pipe.hgetall(md_key)
        pipe.hget(md_key[: -len(":md")] + ":meta", "score")
    replies = pipe.execute()
    found = []
    for md, score in zip(replies[::2], replies[1::2], strict=True):
        metadata = {k: json.loads(v) for k, v in md.items()}
        if all(metadata.get(k) == v for k, v in wanted.items()):
            found.append((float(score), metadata))
    found.sort(key=lambda item: item[0], reverse=True)
    return [m for _, m in found[:limit]]


def bench_list(store: RedisSessionStore, raw: redis.Redis, sessions: int) -> list[tuple[object, ...]]:
    rows = []
    for i in range(sessions):
        record = SessionRecord(
            id=new_session_id(), title=f"s{i}", metadata={"category": ("a", "b")[i % 2], "n": i}
        )
        store.create(record)
    prefix = store.options.prefix
    for wanted, label in (({"category": "a"}, "half"), ({"n": sessions - 7}, "1")):
        store.list(50, wanted)  # warm: the listing script loaded
        trips = (
            round_trips(lambda w=wanted: store.list(50, w)),
            round_trips(lambda w=wanted: raw_list(raw, prefix, w, 50)),
        )
        oblix = time_calls(lambda w=wanted: store.list(50, w), 20)
        peer = time_calls(lambda w=wanted: raw_list(raw, prefix, w, 50), 3)
        rows.append(row(f"list_sessions(50, filter matching {label}) of {sessions:,}", oblix, peer, trips))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    _count_round_trips()
    with private_server() as url:
        store = RedisSessionStore(url=url, prefix=f"bench-{new_session_id()[:8]}:")
        raw = redis.Redis.from_url(url, decode_responses=True)  # as the store's client
        rows = bench_messages(store, raw, args.repeat) + bench_list(store, raw, args.sessions)
        version = raw.info("server")["redis_version"]
    print_table(
        f"Redis session store vs raw redis-py (Redis {version}, loopback; ms; ratio = Oblix / raw median; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        ["operation", "oblix med", "oblix p99", "raw med", "raw p99", "ratio", "trips", "raw trips"],
        rows,
    )


if __name__ == "__main__":
    main()
