"""``oblix server`` against hostile clients on loopback (issue 28): each edge that used to give way.

Real server processes (``tests/server_process.py``) with the ``paced`` test double model,
driven by raw sockets, ``httpx`` and the official ``openai`` client:

* a keyless server serves only its own machine (``Host``), and no web page (``Origin``,
  content type);
* a client that stops reading its answer loses its connection after ``--send-timeout``,
  so two of them cannot hold ``--max-concurrency 2``;
* a request head is bounded on every parser (431), ``Content-Length`` with
  ``Transfer-Encoding`` is refused on every parser (400 and closed), and the messages of
  one request are bounded (413);
* ``/v1/oblix/usage`` answers a period out of the calendar with a 400, a damaged ledger
  with an error that names it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server_process import OblixServer, model_toml, write_plugin_dist
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # oblix server processes

KEY = "sk-oblix-edges-4c2b"
#: The parsers ``oblix server --http`` offers; the framing tests run on each.
PARSERS = ["httptools", "h11"]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


def start(home: Path, plugin_dir: Path, *args: str, tokens: int = 3, **kwargs: object) -> OblixServer:
    (home / "config.toml").write_text(model_toml("paced", "local", tokens=tokens))
    return OblixServer(home, *args, plugin_dir=plugin_dir, **kwargs).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> Iterator[OblixServer]:
    server = start(tmp_path_factory.mktemp("keyless"), plugin_dir, "--store-all", "--max-messages", "10")
    yield server
    server.stop()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_body(text: str = "hi", **fields: object) -> dict[str, object]:
    return {"model": "auto", "messages": user(text), **fields}


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def session_count(server: OblixServer) -> int:
    return len(httpx.get(f"{server.base_url}/oblix/sessions", headers=server.auth, timeout=10).json()["data"])


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


# -- the keyless server serves only its own machine -----------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "10.0.0.7"])
def test_keyless_server_refuses_a_foreign_host(keyless: OblixServer, host: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 reads nothing."""
    for path in ("/v1/oblix/sessions", "/v1/models", "/health", "/metrics", "/ui"):
        answer = httpx.get(f"{keyless.root}{path}", headers={"Host": host}, timeout=10)
        message = error_of(answer, 403, "host_not_allowed")
        assert "--allowed-host" in message and "loopback" in message
    before = session_count(keyless)
    refused = httpx.post(
        f"{keyless.base_url}/chat/completions", json=chat_body(), headers={"Host": host}, timeout=10
    )
    error_of(refused, 403, "host_not_allowed")
    assert session_count(keyless) == before  # nothing was answered or stored


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}"]
)
def test_keyless_server_answers_its_loopback_names(keyless: OblixServer, host: str) -> None:
    answer = httpx.get(
        f"{keyless.base_url}/models", headers={"Host": host.format(port=keyless.port)}, timeout=10
    )
    assert answer.status_code == 200, answer.text


def test_a_request_without_host_is_refused(keyless: OblixServer) -> None:
    with socket.create_connection(("127.0.0.1", keyless.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/oblix/sessions HTTP/1.0\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 403 ") and b"host_not_allowed" in answer


def test_allowed_hosts_serve_a_reverse_proxy(tmp_path: Path, plugin_dir: Path) -> None:
    server = start(
        tmp_path, plugin_dir, "--allowed-host", "oblix.internal", "--allowed-host", "proxy.example"
    )
    try:
        for host in ("oblix.internal", "proxy.example:8443", "127.0.0.1"):
            answer = httpx.get(f"{server.base_url}/models", headers={"Host": host}, timeout=10)
            assert answer.status_code == 200, (host, answer.text)
        error_of(
            httpx.get(f"{server.base_url}/models", headers={"Host": "evil.example"}, timeout=10),
            403,
            "host_not_allowed",
        )
    finally:
        server.stop()


def test_with_a_key_the_key_protects_whatever_the_host(tmp_path: Path, plugin_dir: Path) -> None:
    server = start(tmp_path, plugin_dir, api_key=KEY)
    try:
        headers = {"Host": "oblix.example.com"}
        error_of(httpx.get(f"{server.base_url}/models", headers=headers, timeout=10), 401, "missing_api_key")
        answer = httpx.get(f"{server.base_url}/models", headers=headers | server.auth, timeout=10)
        assert answer.status_code == 200
    finally:
        server.stop()


def test_a_web_page_cannot_drive_the_api(keyless: OblixServer) -> None:
    """A cross-site ``text/plain`` post (no CORS preflight), or any foreign ``Origin``, is refused."""
    url, before = f"{keyless.base_url}/chat/completions", session_count(keyless)
    body = json.dumps(chat_body("from a web page"))
    for content_type in (
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        None,
    ):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = httpx.post(url, content=body, headers=headers, timeout=10)
        assert "must be JSON" in error_of(answer, 415, "unsupported_media_type")
    for origin in ("https://evil.example", "null", f"http://localhost:{keyless.port + 1}"):
        answer = httpx.post(url, json=chat_body(), headers={"Origin": origin}, timeout=10)
        error_of(answer, 403, "origin_not_allowed")
        read = httpx.get(f"{keyless.base_url}/oblix/sessions", headers={"Origin": origin}, timeout=10)
        error_of(read, 403, "origin_not_allowed")
    assert session_count(keyless) == before  # no model was called, nothing was stored
    own = httpx.post(url, json=chat_body(), headers={"Origin": keyless.root}, timeout=30)
    assert own.status_code == 200 and session_count(keyless) == before + 1  # the server's own pages may
    ui = httpx.get(f"{keyless.root}/ui", headers={"Origin": "https://evil.example"}, timeout=10)
    assert ui.status_code == 200  # the dashboard's files hold no data


# -- stalled readers -------------------------------------------------------------------------------


def stalled_reader(server: OblixServer) -> socket.socket:
    """A streamed request whose client reads the first bytes of the answer, then nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server stalls soon
    sock.connect(("127.0.0.1", server.port))
    body = json.dumps(chat_body("talk for ever", stream=True)).encode()  # the model's million tokens
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    sock.settimeout(30)
    assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    return sock


def test_two_stalled_readers_cannot_hold_both_slots(tmp_path: Path, plugin_dir: Path) -> None:
    args = ("--max-concurrency", "2", "--queue-timeout", "60", "--send-timeout", "1")
    server = start(tmp_path, plugin_dir, *args, tokens=1_000_000)
    stalled = []
    try:
        stalled = [stalled_reader(server), stalled_reader(server)]
        assert server.health()["in_flight"] == 2  # both slots taken by clients that read nothing
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="auto", messages=user("my turn"), max_tokens=2)
        assert answer.choices[0].message.content == "[1] t0 t1"  # answered, not 429 after the queue wait
        assert wait_until(lambda: server.health()["in_flight"] == 0, 30)  # the stalled requests ended
        assert wait_until(lambda: not any(m["busy"] for m in server.health()["models"]), 10)
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
    log = server.log()
    assert "connection(s) whose client accepted no bytes of the answer for 1 s (--send-timeout)" in log
    assert "Traceback" not in log


# -- framing and size, on every parser -------------------------------------------------------------


@pytest.fixture(scope="module", params=PARSERS)
def parsed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path
) -> Iterator[OblixServer]:
    server = start(tmp_path_factory.mktemp(request.param), plugin_dir, "--http", request.param, "--store-all")
    yield server
    server.stop()


def exchange(server: OblixServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before the end
            sock.sendall(data)
        return read_until_closed(sock)


def test_a_request_head_above_the_bound_is_431(parsed: OblixServer) -> None:
    for size in (20 * 1024, 2 * 1024 * 1024):  # above the 16 KiB default; far above it
        head = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * size}\r\n\r\n".encode()
        answer = exchange(parsed, head)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"headers_too_large" in answer and answer.count(b"HTTP/1.1 ") == 1
    normal = exchange(parsed, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert normal.startswith(b"HTTP/1.1 200 ")
    assert "refused 1 request head(s) larger than 16384 bytes with 431" in parsed.log()


def test_content_length_with_transfer_encoding_is_refused_and_closed(parsed: OblixServer) -> None:
    """RFC 9112 §6.1: the ambiguous request is refused and its connection closed, so the body can
    never run as a second, smuggled request."""
    smuggled = json.dumps(chat_body("smuggled")).encode()
    inner = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
        + smuggled
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: "
        + str(len(inner) + 5).encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + inner
    )
    before = session_count(parsed)
    answer = exchange(parsed, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then closed: nothing ran as a second request
    assert session_count(parsed) == before


# -- request size ------------------------------------------------------------------------------------


def test_the_messages_of_one_request_are_bounded(keyless: OblixServer) -> None:
    many = [{"role": "user", "content": f"m{i}"} for i in range(11)]
    answer = httpx.post(
        f"{keyless.base_url}/chat/completions", json={"model": "auto", "messages": many}, timeout=30
    )
    message = error_of(answer, 413, "too_many_messages")
    assert "11 messages" in message and "at most 10" in message and "--max-messages" in message
    fits = httpx.post(
        f"{keyless.base_url}/chat/completions", json={"model": "auto", "messages": many[:10]}, timeout=30
    )
    assert fits.status_code == 200, fits.text


# -- usage -----------------------------------------------------------------------------------------


def test_usage_since_out_of_range_is_a_400(keyless: OblixServer) -> None:
    for since in ("99999999d", "9999999999w"):
        answer = httpx.get(f"{keyless.base_url}/oblix/usage", params={"since": since}, timeout=10)
        assert since in error_of(answer, 400, "invalid_usage_query")
    assert httpx.get(f"{keyless.base_url}/oblix/usage", params={"since": "7d"}, timeout=10).status_code == 200


def test_a_damaged_ledger_is_named_and_a_503(tmp_path: Path, plugin_dir: Path) -> None:
    """The ledger is the server's, not the query's: 503 with the core's message naming the file."""
    (tmp_path / "sessions").mkdir()
    ledger = tmp_path / "sessions" / ".usage.sqlite3"
    ledger.write_bytes(b"this is not a database" * 200)
    server = start(tmp_path, plugin_dir)
    try:
        message = error_of(
            httpx.get(f"{server.base_url}/oblix/usage", timeout=10), 503, "usage_ledger_unavailable"
        )
        assert str(ledger) in message and "oblix usage --repair" in message
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        assert client.chat.completions.create(model="auto", messages=user("hi")).choices  # still answers
    finally:
        server.stop()
