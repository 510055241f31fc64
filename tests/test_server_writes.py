"""``CoalescedWrites``: what a response writes in one turn of the event loop goes out in one send."""

from __future__ import annotations

import asyncio
from typing import Any

from oblix_server.connections import CoalescedWrites


class RecordingTransport:
    """A stand-in transport that records each write (one per ``send()`` a real one would make)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_one_turn_of_writes_is_one_send_and_the_next_turn_another() -> None:
    async def main() -> list[bytes]:
        transport = RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writes.write(b"data: 1\n\n")
        assert transport.writes == []  # nothing sent within the turn
        await asyncio.sleep(0)
        writes.write(b"data: 2\n\n")
        await asyncio.sleep(0)
        assert writes.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's
        return transport.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n", b"data: 2\n\n"]


def test_close_sends_what_was_written_first() -> None:
    async def main() -> RecordingTransport:
        transport = RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 401 Unauthorized\r\nconnection: close\r\n\r\n")
        writes.write(b"{}")
        writes.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return transport

    transport = asyncio.run(main())
    assert transport.writes == [b"HTTP/1.1 401 Unauthorized\r\nconnection: close\r\n\r\n{}"]
    assert transport.closed
