"""Issue 28 attacked again by class, as a hostile client and a hostile endpoint would: each test
here failed on the code before its fix (see docs/reliability.md).

* **Budgets**: a session's own budget counts answers asked with ``store=False``; a cloud try
  that ends without completing is counted whatever it produced before the end (tool calls
  only, a chunk refused at the answer cap, nothing but the provider's own count).
* **The keyless server** (real ``oblix server`` processes, raw sockets, both ``--http``
  parsers): two ``Host`` headers are a 400; an absolute-form target naming a foreign host is a
  403 (it stands for the ``Host``); a request head is bounded after a request whose body the
  app never read.

The endpoint is :class:`ScriptedOpenAI`, a loopback HTTP server (a test double standing in for a
misbehaving OpenAI-compatible provider: no real provider can be made to misbehave on demand)
in front of the real ``openai`` client.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from oblix_core.client import OblixClient
from oblix_core.errors import OblixError
from oblix_core.models.backend import ModelType
from oblix_core.request.budgets import BudgetExceededError
from oblix_core.request.execution import ExecutionSettings
from oblix_core.usage.ledger import MAX_COST_USD, LedgerDamagedError, parse_since
from tests.conftest import FAST
from tests.hostile_openai import HostileOpenAI, _Handler
from tests.server_process import OblixServer, model_toml, write_plugin_dist
from tests.support.waiting import wait_until

CLOUD = "openai:gpt-4o-mini"
PARSERS = ["httptools", "h11"]


class _Scripted(_Handler):
    def _stream(self, owner: HostileOpenAI) -> None:
        for event in owner.script:  # type: ignore[attr-defined]
            self._event(event)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class ScriptedOpenAI(HostileOpenAI):
    """The hostile endpoint streaming ``script`` (a list of event payloads), then ``[DONE]``."""

    handler = _Scripted

    def __init__(self, script: list[dict[str, Any]]) -> None:
        super().__init__()
        self.script = script


def text(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def finish(reason: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def tool_call(arguments: str) -> dict[str, Any]:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _client(home: Path, endpoint: HostileOpenAI, execution: ExecutionSettings = FAST) -> OblixClient:
    client = OblixClient(home=home, execution=execution)
    await client.hook_model(ModelType.OPENAI, "gpt-4o-mini", endpoint=endpoint.url, context_window=8192)
    return client


# -- budgets ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_session_budget_counts_answers_not_stored(home: Path) -> None:
    """``store=False`` on a session with ``budget_usd``: before, its records had no session, so
    the session's budget never closed (4 answers of $0.00075 under a $0.0001 budget)."""
    script = [text("hello there"), finish(), usage(1000, 1000)]
    with ScriptedOpenAI(script) as endpoint:
        async with await _client(home, endpoint) as client:
            sid = await client.create_session("budgeted", metadata={"budget_usd": 0.0001})
            await client.execute("hi", session_id=sid, stream=False, store=False)
            with pytest.raises(BudgetExceededError, match=f"session {sid} budget"):
                await client.execute("again", session_id=sid, stream=False, store=False)
            assert client.load_session(sid)["messages"] == []  # still nothing stored
            [record] = client.usage_ledger.recent(5)
            assert record.session_id == sid and record.cost_usd == pytest.approx(0.00075)
            other = await client.execute("no session budget here", stream=False, store=False)
            assert other["response"]  # a session without a budget is not affected
        assert endpoint.chat_requests == 2


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["0.0001", -1, True, [0.0001], {"usd": 1}], ids=repr)
async def test_a_session_budget_that_is_no_number_counts_as_spent(home: Path, value: Any) -> None:
    """Before: ``budget_usd`` set to a string, a negative number, a bool or a list was read as
    no budget at all: every cloud answer went through."""
    with ScriptedOpenAI([text("hello there"), finish(), usage(10, 10)]) as endpoint:
        async with await _client(home, endpoint) as client:
            sid = await client.create_session("budgeted", metadata={"budget_usd": value})
            with pytest.raises(BudgetExceededError, match=r"budget_usd=.* is not a number >= 0") as info:
                await client.execute("hi", session_id=sid, stream=False)
            assert info.value.budget.name == f"session {sid}"
            assert "cannot be applied" in str(info.value) and "Nothing was sent" in str(info.value)
            client.update_session_metadata(sid, {"budget_usd": None})  # no budget: answered
            assert (await client.execute("hi", session_id=sid, stream=False))["response"]
        assert endpoint.chat_requests == 1


@pytest.mark.anyio
@pytest.mark.parametrize("price", ["1e308"])  # inf itself is refused when config.toml is read
async def test_a_cost_too_large_for_a_float_counts_as_the_most_an_answer_can_cost(
    home: Path, price: str
) -> None:
    """Before: a price whose cost overflowed to infinity was recorded as $0 (the ledger keeps
    finite amounts only), so the budget never closed."""
    (home / "config.toml").write_text(
        "[budgets]\ndaily_usd = 1000\n\n"
        f'[[models]]\ntype = "openai"\nname = "gpt-4o-mini"\nprice_out = {price}\n'
    )
    with ScriptedOpenAI([text("hello there"), finish(), usage(10, 10)]) as endpoint:
        async with await _client(home, endpoint) as client:
            result = await client.execute("hi", stream=False)
            assert result["metrics"]["cost_usd"] == MAX_COST_USD
            [record] = client.usage_ledger.recent(5)
            assert record.cost_usd == MAX_COST_USD
            with pytest.raises(BudgetExceededError, match="daily budget"):
                await client.execute("again", stream=False)
        assert endpoint.chat_requests == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "script",
    [
        [tool_call('{"a": ' + "1" * 4000), usage(1000, 1000)],  # a tool call, then the stream ends
        [usage(1000, 1000)],  # nothing but the provider's count, then the stream ends
    ],
    ids=["tool-call-only", "count-only"],
)
async def test_every_try_that_ends_unfinished_is_counted(home: Path, script: list[dict[str, Any]]) -> None:
    """Before: a try that streamed no text was neither counted nor stopped from being retried:
    three paid tries (the provider's count said so), nothing in the ledger, no budget closed."""
    (home / "config.toml").write_text("[budgets]\ndaily_usd = 0.001\n")
    with ScriptedOpenAI(script) as endpoint:
        async with await _client(home, endpoint) as client:
            with pytest.raises(Exception, match="without a finish reason"):
                await client.execute("hi", stream=False)
            records = client.usage_ledger.recent(10)
            assert len(records) == endpoint.chat_requests == 1 + FAST.max_retries
            for record in records:
                assert record.model_id == CLOUD and record.error.startswith("interrupted")
                assert (record.input_tokens, record.output_tokens) == (1000, 1000)
            assert client.usage()["total"]["cost_usd"] == pytest.approx(0.00075 * len(records))
            with pytest.raises(BudgetExceededError, match="daily budget"):
                await client.execute("and another", stream=False)
        assert endpoint.chat_requests == 1 + FAST.max_retries


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["text", "tool-call"])
async def test_a_chunk_refused_at_the_answer_cap_is_counted(home: Path, what: str) -> None:
    """Before: a first chunk over ``max_answer_chars`` (an upstream's 200,000-character "token")
    was dropped with nothing counted, though the provider produced it."""
    big = "x" * 200_000
    script = [text(big) if what == "text" else tool_call(big), finish(), usage(100, 50_000)]
    capped = ExecutionSettings(
        backoff_initial=0.001,
        backoff_max=0.002,
        first_token_timeout=5,
        total_timeout=10,
        max_answer_chars=50_000,
    )
    with ScriptedOpenAI(script) as endpoint:
        async with await _client(home, endpoint, capped) as client:
            sid = await client.create_session("capped")
            with pytest.raises(Exception, match="max_answer_chars=50000"):
                await client.execute("go", session_id=sid, stream=False)
            assert client.load_session(sid)["messages"] == []  # nothing partial stored as complete
            [record] = client.usage_ledger.recent(5)
            assert record.error.startswith("interrupted") and "max_answer_chars" in record.error
            assert record.tokens_estimated and record.output_tokens >= 50_000  # 4 characters a token
        assert endpoint.chat_requests == 1  # a capped answer is not asked for again


@pytest.mark.anyio
@pytest.mark.parametrize("id_size", [1000, 0])
async def test_endless_new_tool_calls_stop_at_the_answer_cap(home: Path, id_size: int) -> None:
    """Before: only tool-call names and arguments counted for ``max_answer_chars``, so an endpoint
    streaming new calls (each with a 1,000-character id, or empty) grew the answer without
    bound: here 5,000 calls were kept and answered."""
    script = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": "x" * id_size}]}}]}
        for i in range(5000)
    ]
    capped = ExecutionSettings(
        backoff_initial=0.001,
        backoff_max=0.002,
        first_token_timeout=5,
        total_timeout=30,
        max_answer_chars=50_000,
    )
    with ScriptedOpenAI([*script, finish("tool_calls"), usage(100, 100)]) as endpoint:
        async with await _client(home, endpoint, capped) as client:
            with pytest.raises(Exception, match="max_answer_chars=50000"):
                await client.execute("go", stream=False)
            [record] = client.usage_ledger.recent(5)
            assert record.error.startswith("interrupted") and "max_answer_chars" in record.error
        assert endpoint.chat_requests == 1


@pytest.mark.anyio
@pytest.mark.parametrize("damage", ["a directory", "another table"])
async def test_a_ledger_of_another_shape_is_named_and_repaired(home: Path, damage: str) -> None:
    """Before: a ledger path that is a directory raised ``IsADirectoryError``, a ``usage`` table
    of another shape ``sqlite3.OperationalError: no such column: day`` — a 500 on the server,
    "This is unexpected" in the CLI — instead of the damaged-ledger error naming the file."""
    async with OblixClient(home=home) as client:
        client.usage(since="7d")  # the ledger file exists
        path = client.usage_ledger.ledger.path  # type: ignore[attr-defined]
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    if damage == "a directory":
        path.unlink()
        path.mkdir()
    else:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.executescript("DROP TABLE usage; CREATE TABLE usage (x TEXT);")
    with ScriptedOpenAI([text("hello there"), finish(), usage(10, 10)]) as endpoint:
        async with await _client(home, endpoint) as client:
            with pytest.raises(LedgerDamagedError, match="oblix usage --repair") as info:
                client.usage(since="7d")
            assert str(path) in str(info.value)
            assert "moved the damaged usage ledger" in client.usage_ledger.repair().lower()
            await client.execute("hi", stream=False)
            assert client.usage(since="7d")["total"]["requests"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event", "named"),
    [
        (text(123), "content is int"),  # type: ignore[arg-type]
        (text(["a"]), "content is list"),  # type: ignore[arg-type]
        ({"choices": "xyz"}, "choices is str"),
        ({"choices": [None]}, "choices[0] is NoneType"),
        ({"choices": [{"delta": "hi"}]}, "delta str"),
        ({"choices": [{"delta": {"tool_calls": [1]}}]}, "a tool call is int"),
        ({"choices": [{"delta": {"tool_calls": [{"index": "x", "function": 5}]}}]}, "wrong type"),
        ({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 5}}]}}]}, "wrong type"),
    ],
    ids=[
        "int-content",
        "list-content",
        "str-choices",
        "null-choice",
        "str-delta",
        "int-call",
        "bad-call",
        "int-name",
    ],
)
async def test_a_malformed_event_is_named_not_an_unexpected_failure(
    home: Path, event: dict[str, Any], named: str
) -> None:
    """The openai SDK checks no types: before, ``content: 123`` and the like surfaced as
    "failed unexpectedly: TypeError: object of type 'int' has no len()" from deep in the executor."""
    with ScriptedOpenAI([event, finish(), usage(10, 10)]) as endpoint:
        async with await _client(home, endpoint) as client:
            with pytest.raises(OblixError, match="sent a malformed stream event") as info:
                await client.execute("hi", stream=False)
            assert named in str(info.value) and "unexpectedly" not in str(info.value)
        assert endpoint.chat_requests == 1  # not asked again: the endpoint is broken, not busy


# -- the keyless server, on every parser ------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_dist(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module", params=PARSERS)
def keyless(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path
) -> Iterator[OblixServer]:
    home = tmp_path_factory.mktemp(request.param)
    (home / "config.toml").write_text(model_toml("paced", "local", tokens=3))
    server = OblixServer(home, "--http", request.param, "--store-all", plugin_dir=plugin_dir).start()
    yield server
    server.stop()


def exchange(server: OblixServer, data: bytes, limit: float = 30.0) -> bytes:
    """What the server answers ``data`` with, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=limit) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before the end
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def statuses(answer: bytes) -> list[bytes]:
    return [part.split(b"\r\n", 1)[0] for part in answer.split(b"HTTP/1.1 ")[1:]]


def sessions_listed(answer: bytes) -> bool:
    return b'"data"' in answer


@pytest.mark.slow
def test_two_host_headers_are_a_400(keyless: OblixServer) -> None:
    """RFC 9112 §3.2; before, httptools served the first (a proxy may have checked the other)."""
    for hosts in (("localhost", "evil.example"), ("evil.example", "localhost"), ("localhost", "localhost")):
        head = "".join(f"Host: {h}\r\n" for h in hosts)
        answer = exchange(
            keyless, f"GET /v1/oblix/sessions HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode()
        )
        assert statuses(answer) == [b"400 Bad Request"], answer[:300]
        assert not sessions_listed(answer)  # h11 refuses it itself; httptools passes it to the guard
        assert b"ambiguous_host" in answer or b"Invalid HTTP request" in answer


@pytest.mark.slow
@pytest.mark.parametrize(
    "target", ["http://evil.example/v1/oblix/sessions", "HTTP://evil.example:80/v1/oblix/sessions?limit=5"]
)
def test_an_absolute_form_target_stands_for_the_host(keyless: OblixServer, target: str) -> None:
    """Before, httptools served the path of ``GET http://evil.example/...`` with ``Host: localhost``,
    alone or pipelined behind another request in the same segment."""
    request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    answer = exchange(keyless, request)
    assert statuses(answer) == [b"403 Forbidden"], answer[:300]
    assert b"host_not_allowed" in answer and not sessions_listed(answer)
    pipelined = exchange(keyless, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n" + request)
    assert b"host_not_allowed" in pipelined and not sessions_listed(pipelined), pipelined[-300:]


@pytest.mark.slow
def test_a_url_in_a_chat_message_is_no_absolute_form_target(keyless: OblixServer) -> None:
    """The guard looks for absolute-form request lines in everything that arrives: a message
    that quotes one (JSON has no raw line feeds in strings) is still answered."""
    content = "see\r\nGET http://evil.example/v1/oblix/sessions HTTP/1.1\r\n and http://evil.example"
    body = {"model": "auto", "messages": [{"role": "user", "content": content}]}
    answer = httpx.post(f"{keyless.base_url}/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_a_head_is_bounded_after_a_body_the_app_never_read(keyless: OblixServer) -> None:
    """Before, on httptools, the head that followed a request whose body no route read was never
    counted: a 2 MiB header line was served."""
    first = b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
    big = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\n"
    answer = exchange(keyless, first + big)
    assert statuses(answer)[0] == b"200 OK", answer[:300]
    refused = ([b"431 Request Header Fields Too Large"], [b"400 Bad Request"])  # the guard's, h11's own
    assert statuses(answer)[1:] in refused, answer[-300:]


# -- numbers in queries -------------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["\u00b2d", "1" * 5000 + "d", "\u0663d", "000d", 7, None, 1.5])
def test_every_since_spelling_is_a_date_or_a_clear_error(since: Any) -> None:
    """Before: "²d" (``str.isdigit`` takes it, ``int`` does not) and 5,000 digits (over ``int``'s
    4,300-digit limit) raised ValueError, a non-string AttributeError: a 500 on the server, "This
    is unexpected" in the CLI."""
    with pytest.raises(OblixError, match="since") as info:
        parse_since(since, today=date(2025, 6, 1))
    assert len(str(info.value)) < 300  # the value is shown, cut short


def test_since_spellings_that_hold() -> None:
    today = date(2025, 6, 1)
    assert parse_since("007D", today) == parse_since(" 7d", today) == date(2025, 5, 26)
    assert parse_since("2w", today) == date(2025, 5, 19) and parse_since("2025-01-31", today) == date(
        2025, 1, 31
    )


@pytest.mark.slow
def test_numbers_in_queries_are_400s_never_500s(keyless: OblixServer) -> None:
    base = keyless.base_url
    for path, name, value in [
        ("/oblix/sessions", "limit", "\u00b2"),
        ("/oblix/sessions", "limit", "9" * 5000),
        ("/oblix/decisions", "limit", "\u00b3"),
        ("/oblix/usage", "since", "\u00b2d"),
        ("/oblix/usage", "since", "1" * 5000 + "d"),
    ]:
        answer = httpx.get(f"{base}{path}", params={name: value}, timeout=30)
        assert answer.status_code == 400, (path, name, answer.text)
        assert len(answer.text) < 600
    assert "Traceback" not in keyless.log() and "failed unexpectedly" not in keyless.log()


# -- a reader that takes a few bytes now and then ----------------------------------------------------


def drip(server: OblixServer, stop: threading.Event) -> None:
    """A streamed request whose client reads 256 bytes every 0.1 s until ``stop`` (or the end)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        body = b'{"model": "auto", "stream": true, "messages": [{"role": "user", "content": "go"}]}'
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while not stop.is_set() and sock.recv(256):
                time.sleep(0.1)


@pytest.mark.slow
def test_a_drip_reader_loses_its_slot(tmp_path: Path, plugin_dir: Path) -> None:
    """A client that reads 256 bytes every 0.1 s keeps its stream just moving, yet loses its slot
    (here the only one) after ``--send-timeout``: its reads are too few to let the server's
    writes resume within it. (Held before too; pinned. A reader fast enough to make the
    writes resume within every ``--send-timeout`` is not cut: docs/server.md.)"""
    (tmp_path / "config.toml").write_text(model_toml("paced", "local", tokens=1_000_000))
    args = ("--max-concurrency", "1", "--queue-timeout", "60", "--send-timeout", "1")
    server = OblixServer(tmp_path, *args, plugin_dir=plugin_dir).start()
    stop = threading.Event()
    reader = threading.Thread(target=drip, args=(server, stop), daemon=True)
    try:
        reader.start()
        assert wait_until(lambda: server.health()["in_flight"] == 1, 10)
        assert wait_until(lambda: server.health()["in_flight"] == 0, 20), "the drip reader kept the slot"
        assert reader.is_alive()  # still reading what the kernel had buffered: the server let go
    finally:
        stop.set()
        reader.join(10)
        server.stop()
    assert "(--send-timeout)" in server.log() and "Traceback" not in server.log()
