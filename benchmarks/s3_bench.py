"""S3 session store versus raw boto3 doing the minimal equivalent, on moto's S3 server.

The server (``tests.s3_server``: moto in server mode, one request at a time in its
backend) runs as a separate process on loopback, so client and server do not share a
GIL. Peers, in the same run against the same server:

* append: one raw ``put_object`` of the same JSON line (any durable S3 append costs at
  least one PUT);
* load: one raw ``get_object`` of a single object holding the same messages as JSONL,
  plus ``json.loads`` of each line;
* list: one raw ``get_object`` of a single object holding every session's summary,
  filtered in Python (the minimal equivalent), and a naive scan that lists the bucket
  and GETs every manifest.

Requests are counted with a botocore ``before-send`` hook (every HTTP attempt).
Run: ``.venv/bin/python -m benchmarks.s3_bench [--sessions 10000]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

from benchmarks._table import median_ms, p99_ms, print_table, time_calls
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_s3.store import S3SessionStore
from tests.s3_server import TEST_ENV, S3Process

TEXT = "A typical chat message of moderate length, about a hundred characters long, give or take a few."


class Counter:
    """HTTP requests sent by one boto3 client."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-send.s3", self._hit)

    def _hit(self, **_: Any) -> None:
        self.count += 1

    def per_call(self, func: Callable[[], object], repeat: int) -> tuple[list[float], float]:
        start = self.count
        samples = time_calls(func, repeat)
        return samples, (self.count - start) / repeat


def line(message: Message) -> bytes:
    return json.dumps(message.to_dict(), separators=(",", ":")).encode() + b"\n"


def fill(store: S3SessionStore, sid: str, count: int) -> bytes:
    """Append ``count`` messages in batches of 100; returns the same messages as JSONL."""
    raw = b""
    for start in range(0, count, 100):
        batch = [Message("user", TEXT) for _ in range(min(100, count - start))]
        store.append_messages(sid, batch)
        raw += b"".join(line(m) for m in batch)
    return raw


def bench_appends(store: S3SessionStore, raw: Any, bucket: str, repeat: int) -> list[tuple[object, ...]]:
    counter, raw_counter = Counter(store.objects.client), Counter(raw)
    rows = []
    for size in (0, 10_000):
        sid = new_session_id()
        store.create(SessionRecord(id=sid))
        fill(store, sid, size)
        samples, requests = counter.per_call(
            lambda sid=sid: store.append_messages(sid, [Message("user", TEXT)]), repeat
        )
        body = line(Message("user", TEXT))
        peer, peer_requests = raw_counter.per_call(
            lambda body=body: raw.put_object(Bucket=bucket, Key=f"raw/{uuid.uuid4().hex}", Body=body), repeat
        )
        rows.append(
            (
                f"append 1 message at {size:,} messages",
                median_ms(samples),
                p99_ms(samples),
                median_ms(peer),
                median_ms(samples) / median_ms(peer),
                f"{requests:.2f} vs {peer_requests:.0f}",
            )
        )
    return rows


def bench_loads(store: S3SessionStore, raw: Any, bucket: str) -> list[tuple[object, ...]]:
    counter, raw_counter = Counter(store.objects.client), Counter(raw)
    rows = []
    for size in (1_000, 10_000):
        sid = new_session_id()
        store.create(SessionRecord(id=sid))
        body = fill(store, sid, size)
        raw.put_object(Bucket=bucket, Key=f"raw-load/{size}.jsonl", Body=body)

        def raw_load(size: int = size) -> list[Any]:
            data = raw.get_object(Bucket=bucket, Key=f"raw-load/{size}.jsonl")["Body"].read()
            return [json.loads(x) for x in data.splitlines()]

        assert len(store.load(sid).messages) == size == len(raw_load())
        samples, requests = counter.per_call(lambda sid=sid: store.load(sid), 10)
        peer, _ = raw_counter.per_call(raw_load, 10)
        rows.append(
            (
                f"load a {size:,}-message session",
                median_ms(samples),
                p99_ms(samples),
                median_ms(peer),
                median_ms(samples) / median_ms(peer),
                f"{requests:.0f} vs 1",
            )
        )
        if size == 10_000:
            samples, requests = counter.per_call(lambda sid=sid: store.load_recent(sid, 50), 10)
            rows.append(
                (
                    "load_recent(50) of it",
                    median_ms(samples),
                    p99_ms(samples),
                    median_ms(peer),
                    median_ms(samples) / median_ms(peer),
                    f"{requests:.0f} vs 1",
                )
            )
    return rows


def bench_list(store: S3SessionStore, raw: Any, bucket: str, sessions: int) -> list[tuple[object, ...]]:
    def make(i: int) -> None:
        metadata = {"category": ("support", "sales")[i % 2], "n": i}
        store.create(SessionRecord(id=new_session_id(), title=f"s{i}", metadata=metadata))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(sessions)))
    summaries = store.list(limit=sessions + 100)
    raw.put_object(Bucket=bucket, Key="raw-index.json", Body=json.dumps(summaries).encode())

    def raw_list(wanted: dict[str, Any]) -> list[Any]:
        found = json.loads(raw.get_object(Bucket=bucket, Key="raw-index.json")["Body"].read())
        found = [s for s in found if all(s["metadata"].get(k) == v for k, v in wanted.items())]
        return sorted(found, key=lambda s: s["updated_at"], reverse=True)[:50]

    def naive_list(wanted: dict[str, Any]) -> list[Any]:
        keys = [k for k in store.objects.list_keys("oblix/sessions/") if k.endswith("/manifest.json")]
        with ThreadPoolExecutor(16) as pool:
            manifests = list(
                pool.map(lambda k: json.loads(raw.get_object(Bucket=bucket, Key=k)["Body"].read()), keys)
            )
        found = [m for m in manifests if all(m["metadata"].get(k) == v for k, v in wanted.items())]
        return sorted(found, key=lambda m: m["updated_at"] or m["created_at"], reverse=True)[:50]

    counter = Counter(store.objects.client)
    rows = []
    for label, wanted in (("filter", {"category": "support"}), ("filter matching 1", {"n": sessions - 7})):
        fresh = S3SessionStore(bucket=store.bucket, endpoint_url=store.endpoint_url)  # no cached shards
        first = time_calls(lambda fresh=fresh, wanted=wanted: fresh.list(50, wanted), 1)
        samples, requests = counter.per_call(lambda wanted=wanted: store.list(50, wanted), 10)
        peer = time_calls(lambda wanted=wanted: raw_list(wanted), 10)
        rows.append(
            (
                f"list_sessions(50, {label}) over {sessions:,}",
                median_ms(samples),
                p99_ms(samples),
                median_ms(peer),
                median_ms(samples) / median_ms(peer),
                f"{requests:.0f} vs 1",
            )
        )
        rows.append(
            (
                "  the same, first call of a new store",
                first[0] * 1000,
                "-",
                median_ms(peer),
                first[0] * 1000 / median_ms(peer),
                "16 vs 1",
            )
        )
        fresh.close()
    naive = time_calls(lambda: naive_list({"category": "support"}), 1)
    rows.append(
        (
            f"  naive: list + GET every manifest ({sessions:,})",
            naive[0] * 1000,
            "-",
            "-",
            "-",
            f"{sessions + 1}+",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    os.environ.update(TEST_ENV)
    logging.disable(logging.WARNING)
    server = S3Process().start()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        raw = boto3.client("s3", endpoint_url=server.url)
        raw.create_bucket(Bucket=bucket)
        store = S3SessionStore(bucket=bucket, endpoint_url=server.url)
        rows = bench_appends(store, raw, bucket, args.repeat)
        rows += bench_loads(store, raw, bucket)
        rows += bench_list(store, raw, bucket, args.sessions)
        store.close()
    finally:
        server.stop()
    print_table(
        "S3 session store on moto server (ms; ratio = Oblix median / raw boto3 median, lower is better)",
        ["operation", "oblix median", "oblix p99", "raw boto3", "ratio", "requests (oblix vs raw)"],
        rows,
    )


if __name__ == "__main__":
    main()
