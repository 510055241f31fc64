"""``oblix server`` against slow and half-open connections (slowloris), on real sockets.

A real server process with the usual descriptor limit (``ulimit -n`` 1,024) and 1,100
connections that never finish their headers, while a normal client (the official
``openai`` client) must still be answered within a few seconds; and the deadlines one by
one: headers, body, an unauthenticated body, shutdown, the cap on open connections.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server_process import OblixServer, model_toml, write_plugin_dist
from tests.support.waiting import wait_until

pytestmark = pytest.mark.reliability

KEY = "sk-oblix-slowloris-5e1d"
NOFILE = 1024  # the usual limit
HALF_OPEN = 1100  # more than the server's whole descriptor limit
CLIENT_TRIALS = 5
PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


#: The server's HTTP stacks: the default (httptools on uvloop, where installed) and the pure-Python one.
STACKS = {"default": (), "h11-asyncio": ("--http", "h11", "--loop", "asyncio")}


@pytest.fixture(params=list(STACKS))
def stack(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """``oblix server`` options choosing one HTTP stack; every deadline test runs on each."""
    return STACKS[request.param]


def server(home: Path, plugin_dir: Path, *args: str, delay: float = 0.0, **kwargs: object) -> OblixServer:
    (home / "config.toml").write_text(model_toml("paced", "local", tokens=3, delay=delay))
    return OblixServer(home, *args, plugin_dir=plugin_dir, api_key=KEY, **kwargs)  # type: ignore[arg-type]


def read_until_closed(sock: socket.socket, limit: float = 30.0) -> bytes:
    """What the server sends until it closes the connection; fails if still open after ``limit`` s."""
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {limit} s; got {received!r}") from None
    return received


def dribble_until_closed(sock: socket.socket, limit: float = 30.0) -> bytes:
    """Send one body byte every 0.2 s until the server closes; what it sent. Fails after ``limit`` s."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(b" ")
            except OSError:
                return received
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept reading a dribbled body for {limit} s; got {received!r}")


def connect(srv: OblixServer, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def request_head(content_length: int, key: str | None = KEY) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Slowloris:
    """Keeps ``count`` connections open that never finish their headers, reopening any the server closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.socks: list[socket.socket] = []
        self.opened = 0
        self.closed_by_server = 0
        self.failed_connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _reap(self) -> None:
        alive = []
        for sock in self.socks:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                alive.append(sock)
                continue
            except OSError:
                data = b""
            if data:
                alive.append(sock)  # a 408 on its way; the close follows
            else:
                self.closed_by_server += 1
                sock.close()
        self.socks = alive

    def _open_one(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(PARTIAL)
        except OSError:
            self.failed_connects += 1
            return
        sock.setblocking(False)
        self.socks.append(sock)
        self.opened += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._reap()
            while len(self.socks) < self.count and not self._stop.is_set():
                self._open_one()
            self._stop.wait(0.2)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for sock in self.socks:
            sock.close()


def test_slowloris_does_not_starve_a_normal_client(tmp_path: Path, plugin_dir: Path) -> None:
    """1,100 half-open connections (more than ``ulimit -n``); a normal client is still answered."""
    with server(tmp_path, plugin_dir, nofile=NOFILE) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0, timeout=20)
        peak, waits = 0, []
        with Slowloris(srv.port, HALF_OPEN) as attack:
            assert wait_until(lambda: attack.opened >= HALF_OPEN, timeout=120)
            for _ in range(CLIENT_TRIALS):
                peak = max(peak, srv.open_descriptors())
                started = time.monotonic()
                answer = client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}]
                )
                waits.append(time.monotonic() - started)
                assert answer.choices[0].message.content == "[1] t0 t1 t2"
                time.sleep(0.5)
            peak = max(peak, srv.open_descriptors())
        print(
            f"\nslowloris: {attack.opened} half-open connections opened, {attack.closed_by_server} closed "
            f"by the server, {attack.failed_connects} failed connects; server peak {peak} descriptors "
            f"(limit {NOFILE}); normal client answered in {', '.join(f'{w:.2f}' for w in waits)} s"
        )
        assert max(waits) < 10, waits  # "within a few seconds", with room for a loaded 2-core machine
        assert attack.closed_by_server > 0 and peak < NOFILE
        assert httpx.get(f"{srv.root}/health", timeout=10).status_code == 200
    log = srv.log()
    assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]
    assert "to make room for new ones" in log


def test_headers_that_never_finish_get_408_and_are_closed(
    tmp_path: Path, plugin_dir: Path, stack: tuple[str, ...]
) -> None:
    with server(tmp_path, plugin_dir, *stack, "--header-timeout", "1") as srv:
        partial = read_until_closed(connect(srv, PARTIAL))
        assert partial.startswith(b"HTTP/1.1 408 ") and b"connection: close" in partial
        assert json.loads(partial.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert read_until_closed(connect(srv)) == b""  # nothing sent: closed without a word
    assert "did not send complete request headers within 1 s" in srv.log()


def test_a_body_sent_too_slowly_is_cut_off(tmp_path: Path, plugin_dir: Path, stack: tuple[str, ...]) -> None:
    with server(tmp_path, plugin_dir, *stack, "--body-timeout", "1", "--body-min-rate", "100") as srv:
        sock = connect(srv, request_head(100_000) + b'{"model": "auto", ')
        assert read_until_closed(sock) == b""  # the app saw a disconnect; nobody to answer
        assert srv.health()["status"] == "ok"
    log = srv.log()
    assert "whose request body arrived too slowly" in log and "Traceback" not in log


def test_unauthenticated_requests_are_refused_before_the_body(
    tmp_path: Path, plugin_dir: Path, stack: tuple[str, ...]
) -> None:
    with server(tmp_path, plugin_dir, *stack) as srv:
        answer = dribble_until_closed(connect(srv, request_head(1_000_000, key=None)))
        assert answer.startswith(b"HTTP/1.1 401 ") and b"missing_api_key" in answer
        answer = dribble_until_closed(connect(srv, request_head(1_000_000, key="sk-wrong-key-000")))
        assert answer.startswith(b"HTTP/1.1 401 ") and b"invalid_api_key" in answer


def test_shutdown_does_not_wait_for_a_slow_body(
    tmp_path: Path, plugin_dir: Path, stack: tuple[str, ...]
) -> None:
    srv = server(tmp_path, plugin_dir, *stack).start()
    try:
        sock = connect(srv, request_head(1000) + b"{")
        assert wait_until(lambda: srv.open_descriptors() > 0, timeout=5)
        time.sleep(0.5)  # the request reached the app, which waits for the rest of the body
    finally:
        srv.stop()
    sock.close()
    log = srv.log()
    assert "still sending a request body at shutdown" in log
    assert "timeout graceful shutdown exceeded" not in log and "Traceback" not in log


@pytest.fixture
def busy_server(tmp_path: Path, plugin_dir: Path, stack: tuple[str, ...]) -> Iterator[OblixServer]:
    with server(tmp_path, plugin_dir, *stack, "--max-connections", "2", delay=0.5) as srv:
        yield srv


def test_beyond_the_cap_with_every_connection_busy_a_new_one_gets_503(busy_server: OblixServer) -> None:
    srv = busy_server
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    clients = [httpx.Client(timeout=30) for _ in range(2)]
    url = f"{srv.base_url}/chat/completions"
    streams = [c.stream("POST", url, json=body, headers=srv.auth) for c in clients]
    try:
        chunks = [stream.__enter__().iter_bytes() for stream in streams]  # kept: dropping one closes it
        for chunk in chunks:
            next(chunk)  # answering: both connections are busy
        refused = read_until_closed(connect(srv))
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in refused
        assert b"retry-after: 1" in refused
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
        for client in clients:
            client.close()
    assert wait_until(lambda: httpx.get(f"{srv.root}/health", timeout=5).status_code == 200, timeout=30)
    assert "refused 1 new connection(s) with 503" in srv.log()
