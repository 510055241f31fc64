"""The single-server append: one ``EVALSHA`` carrying the messages and the index update.

The append is the hot write (two per request), so on a single server it has its own
lean script, built per store: the index prefix and the TTL are fixed for a store, so they
are written into the script's text instead of travelling with every call, the session id
is read back from the key (``<prefix>{<id>}:``), and the reply is one integer. Its work
on the server is the shared ``append`` and ``index_touch`` of :mod:`oblix_redis.lua`
(same layout, nonces and compaction as every other script), so a session appended here
reads exactly as one appended by the cluster scripts.

Measured in ``benchmarks/redis_bench.py``: the generic script, with three more arguments
and a two-element reply, cost 2.09-2.23x a raw ``RPUSH`` round trip; this one is below 2x
(figures in benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError

import oblix_redis.lua as lua

#: Replies of the append script.
APPLIED, RETRIED, MISSING = 1, 2, -1


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal: every byte as a decimal escape (safe for any prefix)."""
    return '"' + "".join(f"\\{byte}" for byte in text.encode("utf-8")) + '"'


def single_append_script(prefix: str, index_prefix: str, ttl: int) -> str:
    """The append script of one single-server store.

    ``KEYS[1]``: ``<prefix>{<id>}:``; ``ARGV[1]`` nonce, ``[2]`` score, ``[3]``
    last_updated, then the messages. Returns 1 (applied), 2 (a retry of an applied
    append) or -1 (no such session).
    """
    return (
        lua._SESSION_LIB
        + lua._INDEX_LIB
        + f"""
local IX, SKIP = {lua_string(index_prefix)}, {len(prefix.encode("utf-8")) + 1}
local A = {{IX, string.sub(KEYS[1], SKIP + 1, -3), '{int(ttl)}'}}
for i = 1, #ARGV do A[i + 3] = ARGV[i] end
local r = append(session_keys(KEYS[1]), A)
if r[1] == 1 then index_touch(IX, A[2], r[2]) end
return r[1]"""
    )


def run_script(script: Script, client: Any, keys: Sequence[str], args: Sequence[str]) -> Any:
    """``script(keys, args)`` as one ``EVALSHA``, without ``Script.__call__``'s per-call imports
    and copies (about 9 us of a 60 us round trip here); an unknown script is loaded, then run."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:  # a restarted or flushed server, or a new node
        script.sha = client.script_load(script.script)
        return client.evalsha(script.sha, len(keys), *keys, *args)
