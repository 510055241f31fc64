"""A lean HTTP/1.1 load generator: keep-alive connections replaying one pre-encoded request.

Each connection is a plain asyncio stream that writes the same request bytes, reads the
status line and headers, then the body (``Content-Length`` or chunked), and checks the
status; nothing else is parsed or built per request, so the generator takes far less CPU
than an HTTP client library would (on a 2-core machine the server keeps most of a core).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


def post_request(host: str, port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    """The bytes of one keep-alive ``POST`` of ``body`` as JSON."""
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one whole response; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF
        if size == 0:
            return status


async def rate(host: str, port: int, request: bytes, clients: int, seconds: float) -> float:
    """Requests/s that ``clients`` keep-alive connections complete in ``seconds`` (each must be 200)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                status = await _read_response(reader)
                if status != 200:
                    raise RuntimeError(f"the server answered {status}")
                done += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(clients)))
    return done / (time.perf_counter() - started)
