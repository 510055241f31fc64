"""The usage ledger in Redis: per-day counters and a bounded stream, shared by every host.

Keys, all in the ``{#usage}`` hash slot (so one script updates them atomically, on Redis
Cluster too)::

    <prefix>{#usage}:d:<YYYY-MM-DD>  hash of counters: "t|<metric>" (the day's total),
                                    "m|<model id>|<metric>", "s|<session id>|<metric>";
                                    metrics r (requests), lr (local), in, out, ca (cached),
                                    cost (USD), lat (latency ms, summed)
    <prefix>{#usage}:days           sorted set of the days that have counters
    <prefix>{#usage}:sc             hash: session id -> USD spent in all (session budgets)
    <prefix>{#usage}:log            stream of the latest records (JSON), capped at ``keep``
    <prefix>{#usage}:id:<request>   marks a recorded request for a day: a retried record
                                    counts once

A record is all-or-nothing: the script checks every amount (integers of at most 15 digits,
finite non-negative floats), the keys' types and the counters it adds to (numbers, as
``HINCRBY``/``HINCRBYFLOAT`` need) before its first write, and sets the request-id marker
last, so a record it refuses leaves nothing behind — no request counted without its
tokens, no marker that would make a corrected retry count as done.

``totals`` reads one hash per day (only the seven total fields unless grouped by model or
session), so months of data cost a few dozen small reads whatever the traffic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from typing import Any

from oblix.plugin import UsageLedger, UsageRecord, UsageTotals, group_key

_RECORD = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local kinds = {'hash', 'zset', 'hash', 'string', 'stream'}
for k = 1, 5 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= kinds[k] then
    return redis.error_reply('usage key ' .. KEYS[k] .. ' holds a ' .. t .. ', not a ' .. kinds[k])
  end
end
local function amount(field, value)
  if string.sub(field, -5) == '|cost' or string.sub(field, -4) == '|lat' or field == '' then
    local x = tonumber(value)
    return x ~= nil and x == x and x >= 0 and x < 1e15
  end
  return string.match(value, '^%d+$') ~= nil and string.len(value) <= 15
end
local n = (#ARGV - 6) / 2
if not amount('', ARGV[4]) then return redis.error_reply('usage record: bad session cost ' .. ARGV[4]) end
local fields = {}
for i = 0, n - 1 do
  if not amount(ARGV[6 + 2 * i], ARGV[7 + 2 * i]) then
    return redis.error_reply('usage record: bad amount ' .. ARGV[6 + 2 * i] .. '=' .. ARGV[7 + 2 * i])
  end
  fields[i + 1] = ARGV[6 + 2 * i]
end
local function counter(field, value)
  if string.sub(field, -5) == '|cost' or string.sub(field, -4) == '|lat' or field == '' then
    return tonumber(value) ~= nil
  end
  return string.match(value, '^%-?%d+$') ~= nil
end
local current = redis.call('HMGET', KEYS[1], unpack(fields))
for i = 1, n do
  if current[i] and not counter(fields[i], current[i]) then
    return redis.error_reply('usage counter ' .. KEYS[1] .. ' ' .. fields[i] .. ' holds ' .. current[i])
  end
end
if ARGV[3] ~= '' then
  local spent = redis.call('HGET', KEYS[3], ARGV[3])
  if spent and not counter('', spent) then
    return redis.error_reply('usage counter ' .. KEYS[3] .. ' ' .. ARGV[3] .. ' holds ' .. spent)
  end
end
for i = 0, n - 1 do
  local field, amount = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if string.sub(field, -5) == '|cost' or string.sub(field, -4) == '|lat' then
    redis.call('HINCRBYFLOAT', KEYS[1], field, amount)
  else
    redis.call('HINCRBY', KEYS[1], field, amount)
  end
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBYFLOAT', KEYS[3], ARGV[3], ARGV[4]) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[#ARGV])
redis.call('SET', KEYS[4], '1', 'EX', 86400)
return 1
"""

_METRICS = ("r", "lr", "in", "out", "ca", "cost", "lat")
_DIMENSION = {"model": "m", "session": "s"}


def _amounts(record: UsageRecord) -> list[tuple[str, Any]]:
    values = (
        1,
        int(record.local),
        record.input_tokens,
        record.output_tokens,
        record.cached_tokens,
        repr(float(record.cost_usd)),
        repr(float(record.latency_ms)),
    )
    # a session id never holds "(" or " ": the group of requests without a session cannot clash
    prefixes = ["t", f"m|{record.model_id}", f"s|{group_key(record, 'session')}"]
    return [(f"{p}|{m}", v) for p in prefixes for m, v in zip(_METRICS, values, strict=True)]


def _totals(key: str, counters: Iterable[tuple[str, Any]]) -> UsageTotals:
    totals = UsageTotals(key)
    values = dict(counters)
    totals.requests = int(values.get("r") or 0)
    totals.local_requests = int(values.get("lr") or 0)
    totals.input_tokens = int(values.get("in") or 0)
    totals.output_tokens = int(values.get("out") or 0)
    totals.cached_tokens = int(values.get("ca") or 0)
    totals.cost_usd = float(values.get("cost") or 0.0)
    totals.latency_ms = float(values.get("lat") or 0.0)
    return totals


class RedisUsageLedger(UsageLedger):
    """Usage counters and the latest records in Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, client: Any, prefix: str = "oblix:", keep: int = 10_000) -> None:
        self.client = client
        self.base = f"{prefix}{{#usage}}:"
        self.keep = keep
        self._script = client.register_script(_RECORD)

    def record(self, record: UsageRecord) -> None:
        day = record.day
        keys = [
            f"{self.base}d:{day}",
            f"{self.base}days",
            f"{self.base}sc",
            f"{self.base}id:{record.request_id}",
            f"{self.base}log",
        ]
        args: list[Any] = [
            int(day.replace("-", "")),
            day,
            record.session_id or "",
            repr(float(record.cost_usd)),
        ]
        args.append(self.keep)
        for field, amount in _amounts(record):
            args += [field, amount]
        args.append(json.dumps(record.to_dict(), allow_nan=False))
        self._script(keys=keys, args=args)

    def _days(self, since: date) -> list[str]:
        found = self.client.zrangebyscore(f"{self.base}days", int(since.strftime("%Y%m%d")), "+inf")
        return sorted(str(d) for d in found)

    def _read(self, days: list[str], fields: list[str] | None) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            if fields is None:
                pipe.hgetall(f"{self.base}d:{day}")
            else:
                pipe.hmget(f"{self.base}d:{day}", fields)
        replies = pipe.execute()
        if fields is None:
            return [dict(r or {}) for r in replies]
        return [dict(zip(fields, r, strict=True)) for r in replies]

    def totals(self, since: date, by: str | None = None) -> list[UsageTotals]:
        days = self._days(since)
        if by in (None, "day"):
            fields = [f"t|{m}" for m in _METRICS]
            per_day = self._read(days, fields)
            rows = [
                _totals(day, ((f[2:], v) for f, v in c.items())) for day, c in zip(days, per_day, strict=True)
            ]
            if by == "day":
                return [r for r in rows if r.requests]
            total = UsageTotals()
            for row in rows:
                total.merge(row)
            return [total]
        dimension = _DIMENSION[by]
        groups: dict[str, UsageTotals] = {}
        for counters in self._read(days, None):
            parts: dict[str, list[tuple[str, Any]]] = {}
            for field, value in counters.items():
                if field.startswith(dimension + "|"):
                    key, metric = field[2:].rsplit("|", 1)
                    parts.setdefault(key, []).append((metric, value))
            for key, values in parts.items():
                groups.setdefault(key, UsageTotals(key)).merge(_totals(key, values))
        return sorted(groups.values(), key=lambda t: t.key)

    def spent(self, since: date | None = None, session_id: str | None = None) -> float:
        if session_id is not None and since is None:
            return float(self.client.hget(f"{self.base}sc", session_id) or 0.0)
        field = f"s|{session_id}|cost" if session_id is not None else "t|cost"
        days = self._days(since or date.min)
        return sum(float(c[field] or 0.0) for c in self._read(days, [field]))

    def recent(self, limit: int = 50) -> list[UsageRecord]:
        entries = self.client.xrevrange(f"{self.base}log", count=limit)
        return [UsageRecord.from_dict(json.loads(fields["r"])) for _, fields in entries]

    def identity(self) -> str:
        pool = getattr(self.client, "connection_pool", None)
        where = pool.connection_kwargs if pool is not None else {}
        return f"redis:{where.get('host')}:{where.get('port')}:{where.get('db')}:{self.base}"
