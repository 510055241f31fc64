"""The one place where answers are printed to a terminal (``stream=True``, ``chat=True``, the CLI)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from oblix_core.conversation import ResponseStream


async def print_answer(
    response: ResponseStream, *, live: bool = True, out: TextIO | None = None
) -> dict[str, Any]:
    """Consume ``response``, printing the answer (as it streams when ``live``); return the result.

    The answer ends with a newline. If the answer fails midway, what was printed stays
    printed and the line is ended before the error propagates.
    """
    out = out or sys.stdout
    printed = False
    try:
        async with response:
            async for text in response:
                if live:
                    out.write(text)
                    out.flush()
                    printed = True
    finally:
        if printed:
            out.write("\n")
            out.flush()
    assert response.result is not None
    if not live:
        out.write(response.result["response"] + "\n")
        out.flush()
    return response.result
