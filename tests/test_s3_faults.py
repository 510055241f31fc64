"""The S3 store under concurrency and faults, on moto's S3 server (in a thread or a process).

Multi-process writers racing on one session, forced conditional-write conflicts, lost
responses whose request had landed, 503/500 answers, the server stopped and restarted
mid-run, and credentials the server rejects.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from oblix_core.errors import OblixError, SessionNotFoundError
from oblix_core.sessions.records import Message, SessionRecord, new_session_id
from oblix_s3.store import S3SessionStore
from tests.s3_server import ROOT, TEST_ENV, S3Process, S3Server, aws_env_fixture, new_bucket, server_fixture  # noqa: F401 - fixtures `aws_env`, `server`

SECRET = "sekrit-Value-that-must-never-show-0123456789"


def _new(store: S3SessionStore) -> str:
    record = SessionRecord(id=new_session_id())
    store.create(record)
    return record.id


# -- concurrency --------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from oblix_core.sessions.records import Message
    from oblix_s3.store import S3SessionStore

    bucket, url, sid, n, go = sys.argv[1:6]
    store = S3SessionStore(bucket=bucket, endpoint_url=url)
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(200):
        store.append_messages(sid, [Message("user", f"p{n}-{i}")])
    print(json.dumps({"conflicts": store.conflicts}))
    """
)


def test_four_processes_append_200_each(server: S3Server, tmp_path: Path) -> None:
    bucket = new_bucket(server.url)
    store = S3SessionStore(bucket=bucket, endpoint_url=server.url)
    sid = _new(store)
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, bucket, server.url, sid, str(n), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, **TEST_ENV},
        )
        for n in range(4)
    ]
    time.sleep(1.0)  # let every process import and connect before they start together
    go.touch()
    reports = []
    for writer in writers:
        out, _ = writer.communicate(timeout=600)
        assert writer.returncode == 0
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    contents = [m.content for m in store.load(sid).messages]
    assert len(contents) == 800 and len(set(contents)) == 800
    for n in range(4):
        assert [c for c in contents if c.startswith(f"p{n}-")] == [f"p{n}-{i}" for i in range(200)]
    assert sum(r["conflicts"] for r in reports) > 0  # the writers really raced
    assert store.list()[0]["message_count"] == 800
    assert len(store._read_manifest(sid)[1]["segments"]) <= store.max_segments + 1


def test_stale_writers_conflict_and_retry(server: S3Server) -> None:
    bucket = new_bucket(server.url)
    a = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    b = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    sid = _new(a)
    b.load(sid)
    for i in range(30):  # each store's cached manifest is stale at every append
        a.append_messages(sid, [Message("user", f"a{i}")])
        b.append_messages(sid, [Message("user", f"b{i}")])
    assert a.conflicts >= 29 and b.conflicts >= 29
    assert [m.content for m in a.load(sid).messages] == [x for i in range(30) for x in (f"a{i}", f"b{i}")]
    assert a.list()[0]["message_count"] == 60


@pytest.mark.parametrize("race", ["before reading", "after writing the merged segment"])
def test_compaction_that_lost_the_race_is_abandoned(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    bucket = new_bucket(server.url)
    a = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    b = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_segments=4)
    sid = _new(a)
    for i in range(4):
        a.append_messages(sid, [Message("user", str(i))])
    fetch = a._fetch

    def racing_fetch(session_id: str, segments: Any, known: dict[str, bytes]) -> list[bytes]:
        monkeypatch.setattr(a, "_fetch", fetch)
        if race == "before reading":
            b.append_messages(sid, [Message("user", "b")])  # b compacts the same tail first
        bodies = fetch(session_id, segments, known)
        if race != "before reading":
            b.append_messages(sid, [Message("user", "b")])
        return bodies

    monkeypatch.setattr(a, "_fetch", racing_fetch)
    a.append_messages(sid, [Message("user", "4")])  # a's compaction starts, then loses
    manifest = a._read_manifest(sid)[1]
    listed = boto3.client("s3", endpoint_url=server.url).list_objects_v2(
        Bucket=bucket, Prefix=f"oblix/sessions/{sid}/seg-"
    )
    stored = {o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])}
    assert stored == {s["key"] for s in manifest["segments"]}  # no merged orphan left behind
    assert [m.content for m in a.load(sid).messages] == ["0", "1", "2", "3", "4", "b"]


class DuplicateSend:
    """Makes botocore send a successful PutObject again, as if its response had been lost."""

    def __init__(self, store: S3SessionStore) -> None:
        self.target: str | None = None
        self.fired: list[str] = []
        store.objects.client.meta.events.register("needs-retry.s3.PutObject", self._needs_retry)

    def _needs_retry(
        self, response: Any, attempts: int, request_dict: dict[str, Any], **_: Any
    ) -> float | None:
        url = str(request_dict.get("url", ""))
        if (
            self.target
            and self.target in url
            and attempts == 1
            and response
            and response[0].status_code == 200
        ):
            self.fired.append(self.target)
            self.target = None
            return 0.0
        return None


def test_requests_retried_after_they_landed_are_not_applied_twice(server: S3Server) -> None:
    bucket = new_bucket(server.url)
    store = S3SessionStore(bucket=bucket, endpoint_url=server.url)
    duplicate = DuplicateSend(store)
    sid = new_session_id()
    duplicate.target = "/seg-"
    store.create(SessionRecord(id=sid, messages=(Message("user", "first"),)))
    store.delete(sid)
    duplicate.target = "/manifest.json"
    store.create(SessionRecord(id=sid, messages=(Message("user", "first"),)))  # 412 on the copy: ours
    for target in ("/seg-", "/manifest.json", "/index/"):
        duplicate.target = target
        store.append_messages(sid, [Message("user", f"again {target}")])
    assert duplicate.fired == ["/seg-", "/manifest.json", "/seg-", "/manifest.json", "/index/"]
    contents = [m.content for m in store.load(sid).messages]
    assert contents == ["first", "again /seg-", "again /manifest.json", "again /index/"]
    assert store.list()[0]["message_count"] == 4


# -- transient errors and outages -----------------------------------------------------------------


def test_slowdown_and_internal_errors_are_retried(server: S3Server) -> None:
    bucket = new_bucket(server.url)
    store = S3SessionStore(bucket=bucket, endpoint_url=server.url, max_attempts=3)
    sid = _new(store)
    sent: list[str] = []
    store.objects.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(request.method)
    )
    server.app.fail_next(2, 503, "SlowDown")
    store.append_messages(sid, [Message("user", "through")])
    server.app.fail_next(2, 500, "InternalError")
    assert [m.content for m in store.load(sid).messages] == ["through"]
    assert len(sent) == 3 + 2 + 4  # append: 3 requests, load: 2, plus 4 retries
    server.app.fail_next(3, 503, "SlowDown")  # every attempt fails
    with pytest.raises(OblixError, match=f"SlowDown.*{bucket}|{bucket}.*SlowDown"):
        store.load(sid)
    assert [m.content for m in store.load(sid).messages] == ["through"]


def test_server_stopped_and_restarted_mid_run() -> None:
    proc = S3Process().start()
    try:
        bucket = new_bucket(proc.url)
        store = S3SessionStore(bucket=bucket, endpoint_url=proc.url, max_attempts=2, timeout=2)
        sid = _new(store)
        state: dict[str, Any] = {
            "sid": sid,
            "ok": 0,
            "ok_after": 0,
            "errors": [],
            "stop": False,
            "restarted": False,
        }

        def writer() -> None:
            while not state["stop"]:
                try:
                    store.append_messages(state["sid"], [Message("user", "tick")])
                except SessionNotFoundError:  # moto's memory went with the old process
                    state["sid"] = _new(store)
                except Exception as exc:
                    state["errors"].append(exc)
                    time.sleep(0.05)
                else:
                    state["ok_after" if state["restarted"] else "ok"] += 1

        thread = threading.Thread(target=writer)
        thread.start()
        while state["ok"] < 5:
            time.sleep(0.05)
        proc.stop()
        with pytest.raises(OblixError, match=re.escape("Cannot reach S3 at http://127.0.0.1")) as caught:
            store.load(sid)
        assert bucket in str(caught.value)
        for call in (store.list, lambda: store.update_metadata(sid, {"a": 1}), lambda: store.delete(sid)):
            with pytest.raises(OblixError, match="Cannot reach S3"):
                call()
        while len(state["errors"]) < 2:
            time.sleep(0.05)
        proc.start()
        boto3.client("s3", endpoint_url=proc.url).create_bucket(Bucket=bucket)
        state["restarted"] = True
        deadline = time.monotonic() + 60
        while state["ok_after"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        state["stop"] = True
        thread.join()
        assert state["ok_after"] >= 5
        assert all(isinstance(e, OblixError) for e in state["errors"]), state["errors"][:3]
        with pytest.raises(SessionNotFoundError):
            store.load(sid)  # the in-memory server lost it; the store does not pretend otherwise
        assert store.list()[0]["id"] == state["sid"]
        store.close()
    finally:
        proc.stop()


# -- credentials ------------------------------------------------------------------------------------

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def auth_server() -> Iterator[dict[str, str]]:
    """A moto server that checks credentials after its first 4 requests (which set it up)."""
    proc = S3Process(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}).start()
    try:
        setup = {"aws_access_key_id": TEST_ENV["AWS_ACCESS_KEY_ID"], "region_name": "us-east-1"}
        iam = boto3.client("iam", endpoint_url=proc.url, aws_secret_access_key="x", **setup)
        iam.create_user(UserName="admin")
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY))
        bucket = new_bucket(proc.url, aws_access_key_id="x", aws_secret_access_key="x")
        admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        iam = boto3.client("iam", endpoint_url=proc.url, region_name="us-east-1", **admin)
        iam.create_user(UserName="nobody")
        nobody = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield {
            "url": proc.url,
            "bucket": bucket,
            "admin_id": key["AccessKeyId"],
            "admin_secret": key["SecretAccessKey"],
            "nobody_id": nobody["AccessKeyId"],
            "nobody_secret": nobody["SecretAccessKey"],
        }
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("who", "problem"),
    [
        ("admin", None),
        ("unknown key", r"rejected the AWS credentials \(InvalidAccessKeyId\)"),
        ("wrong secret", r"rejected the AWS credentials \(SignatureDoesNotMatch\)"),
        ("no permission", r"Access denied \(AccessDenied\)"),
    ],
)
def test_credentials_the_server_rejects_give_clear_errors(
    auth_server: dict[str, str], monkeypatch: pytest.MonkeyPatch, who: str, problem: str | None
) -> None:
    key_id, secret = {
        "admin": (auth_server["admin_id"], auth_server["admin_secret"]),
        "unknown key": ("AKIAUNKNOWNKEY000000", SECRET),
        "wrong secret": (auth_server["admin_id"], SECRET),
        "no permission": (auth_server["nobody_id"], auth_server["nobody_secret"]),
    }[who]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3SessionStore(bucket=auth_server["bucket"], endpoint_url=auth_server["url"])
    shown = json.dumps(store.describe()) + repr(store)
    assert secret not in shown and key_id not in shown
    if problem is None:
        sid = _new(store)
        assert store.list(filter_metadata={})[0]["id"] == sid
        return
    for call in (lambda: store.create(SessionRecord(id=new_session_id())), lambda: store.load("abc")):
        with pytest.raises(OblixError, match=problem) as caught:
            call()
        message = str(caught.value)
        assert auth_server["bucket"] in message and auth_server["url"] in message
        assert secret not in message and key_id not in message


def test_no_credentials_at_all(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3SessionStore(bucket="whatever-bucket", endpoint_url=server.url)
    with pytest.raises(OblixError, match=r"No AWS credentials found .*whatever-bucket.* AWS_ACCESS_KEY_ID"):
        store.load("abc")


# -- a writer killed between a create's commit and its index update (issue 17 item 3) -----------

KILLED_CREATOR = textwrap.dedent(
    """
    import os, signal, sys
    from oblix_core.sessions.records import Message, SessionRecord
    from oblix_s3.store import S3SessionStore

    bucket, url, sid = sys.argv[1:4]
    store = S3SessionStore(bucket=bucket, endpoint_url=url)
    put = store.objects.put

    def put_then_die(key, body, **kwargs):
        etag = put(key, body, **kwargs)
        if key.endswith("/manifest.json"):  # committed; the index update comes next
            os.kill(os.getpid(), signal.SIGKILL)
        return etag

    store.objects.put = put_then_die
    store.create(SessionRecord(id=sid, title="committed", messages=(Message("user", "hi"),)))
    """
)


def test_a_create_killed_after_its_commit_is_listed_and_migrated(server: S3Server, tmp_path: Path) -> None:
    from oblix_core.sessions.migration import migrate_sessions
    from oblix_file.store import FileSessionStore

    bucket = new_bucket(server.url)
    store = S3SessionStore(bucket=bucket, endpoint_url=server.url)
    other = _new(store)
    sid = new_session_id()
    writer = subprocess.run(
        [sys.executable, "-c", KILLED_CREATOR, bucket, server.url, sid],
        cwd=ROOT,
        env={**os.environ, **TEST_ENV},
        capture_output=True,
        timeout=120,
    )
    assert writer.returncode == -9, writer.stderr.decode()[-2000:]
    assert store.load(sid).title == "committed"
    target = FileSessionStore(tmp_path / "target")
    summary = migrate_sessions(store, target)  # enumerates the manifests, not the listing
    assert (summary.copied, summary.failed) == (2, {})
    assert target.load(sid).to_dict() == store.load(sid).to_dict()
    assert {s["id"] for s in store.list()} == {sid, other}  # the listing converges on read
    fresh = S3SessionStore(bucket=bucket, endpoint_url=server.url)  # and stays so, for every reader
    assert {s["id"] for s in fresh.list()} == {sid, other}
    for s3 in (store, fresh):
        s3.close()
    target.close()
