"""moto's S3 server mode on loopback: in a thread of the test process, or as a subprocess.

moto (5.2, ``S3Response.put_object``) checks ``If-Match`` / ``If-None-Match`` and then
stores the object in a separate step without a lock, so two racing conditional PUTs on
a threaded server can in principle both succeed (a lost update real S3 never allows:
its conditional writes are atomic; the window is small and was not hit in a trial of
4 threads x 100 appends, but a test must not depend on luck). Both servers
here therefore pass each request through moto's own WSGI app under one lock: the HTTP
side stays threaded and keep-alive, the backend sees one request at a time, and
conditional writes get S3's semantics. Everything else is moto, unchanged.

Run as a program (``python -m tests.s3_server PORT``) it serves until SIGTERM; the
fault tests start, stop and restart it. ``INITIAL_NO_AUTH_ACTION_COUNT`` in its
environment turns on moto's credential checks (IAM) after that many requests.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from tests.support.net import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
#: Credentials the tests put in the environment (moto accepts any unless auth is on).
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST0000",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


_REASONS = {500: "Internal Server Error", 503: "Service Unavailable"}


class SerialApp:
    """A WSGI app that runs the wrapped app for one request at a time.

    :meth:`fail_next` makes the next requests fail the way S3 does under load (an
    S3 error document with 503 ``SlowDown`` or 500 ``InternalError``), for retry tests.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.faults: list[tuple[int, str]] = []

    def fail_next(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        with self.lock:
            self.faults.extend([(status, code)] * count)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            if self.faults:
                status, code = self.faults.pop(0)
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                start_response(
                    f"{status} {_REASONS.get(status, 'Error')}", [("Content-Type", "application/xml")]
                )
                return [
                    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                    + code.encode()
                    + b"</Code><Message>Please reduce your request rate.</Message></Error>"
                ]
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


def make_app() -> SerialApp:
    return SerialApp(DomainDispatcherApplication(create_backend_app))


class S3Server(ThreadedMotoServer):
    """``ThreadedMotoServer`` on 127.0.0.1, a free port, with serialised backend access."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__("127.0.0.1", port or free_port(), verbose=False)
        self.app = make_app()

    def _server_entry(self) -> None:
        self._server = make_server(
            self._ip_address, self._port, self.app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        super().start()
        wait_for_http(self.url + "/moto-api/")


class S3Process:
    """The same server as a separate process, to stop and start it (its data is in memory)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Process:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.s3_server", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_http(self.url + "/moto-api/", process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


_shared: S3Server | None = None
_shared_lock = threading.Lock()


def shared_server() -> S3Server:
    """One in-thread server for every test module that asks (stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = S3Server()
            _shared.start()
            atexit.register(_shared.stop)
        return _shared


def new_bucket(url: str, **client_options: Any) -> str:
    name = f"oblix-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=url, **client_options).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module", name="server")
def server_fixture() -> Iterator[S3Server]:
    """A moto S3 server in this process for a test module (import the fixture to use it)."""
    s3 = S3Server()
    s3.start()
    yield s3
    s3.stop()


@pytest.fixture(autouse=True, name="aws_env")
def aws_env_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test credentials in the environment, no AWS profile (autouse where imported)."""
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Store options (``bucket``, ``endpoint_url``) of a fresh bucket; test credentials in the env."""
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = shared_server().url
    return {"bucket": new_bucket(url), "endpoint_url": url}


def s3_store(options: dict[str, str]) -> Any:
    """An S3 store in ``options``' bucket under a prefix of its own."""
    from oblix_s3.store import S3SessionStore

    return S3SessionStore(**options, prefix=f"t-{uuid.uuid4().hex[:8]}/")


def main() -> None:
    port = int(sys.argv[1])
    server = make_server("127.0.0.1", port, make_app(), True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
