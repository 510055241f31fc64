"""The Lua scripts of the redis store: one per operation, each one atomic round trip.

A session script gets one key, ``KEYS[1] = <prefix>{<id>}:``, and works on the keys
named from it, all in the session's ``{<id>}`` hash slot::

    meta   hash: created_at, updated_at, last_updated, score, title, context, count,
           nonce (of the create), ver, acks (the nonces of the last 64 appends, so that
           an append retried after a lost reply or a failover is applied once)
    md     hash: metadata key -> JSON value
    tok    hash: metadata key -> index token of (key, value)
    msgs   list of JSON messages: the recent tail (100 to 199 once compacted)
    chunks list of older messages, 100 JSON texts joined by ',' per element

and ``ARGV[1]`` the index prefix (``<prefix>{#index}:``), ``ARGV[2]`` the session id,
``ARGV[3]`` the TTL in seconds (0: none). The index keys all live in the ``{#index}`` slot
(``#`` never occurs in a session id)::

    <ix>updated      sorted set: session id -> rank: updated_at in ms * 1000, plus a counter
                     (<ix>seq, mod 1000) that orders the writes made within one ms
    <ix>ver          hash: session id -> version of the metadata last indexed
    <ix>md:<token>   set of the ids whose metadata holds that (key, value)
    <ix>of:<id>      set of the tokens indexed for one session (to undo them)

On a single server the index update runs inside the same script (``SINGLE_*``); on a
cluster it is a second script on the index slot (``SESSION_*`` then ``INDEX_*``). Keys
named inside a script always share the slot of the script's declared key, as Redis
Cluster requires.
"""

from __future__ import annotations

# Helpers for the session scripts.
_SESSION_LIB = """
local ACKS = 64  -- append nonces remembered per session (16 hex digits each)
local CHUNK = 100  -- messages per chunk (see compact)
local function session_keys(base)
  return {base .. 'meta', base .. 'md', base .. 'tok', base .. 'msgs', base .. 'chunks'}
end
local function touch(K, ttl)  -- expiry from the server's clock, on every key of the session
  if ttl > 0 then
    for i = 1, 5 do redis.call('EXPIRE', K[i], ttl) end
  end
end
local function next_ver(meta)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local prev = tonumber(redis.call('HGET', meta, 'ver') or '0')
  if now <= prev then now = prev + 1 end
  return string.format('%.0f', now)
end
-- Once 2 * CHUNK messages are loose in msgs, the oldest CHUNK of them become one element
-- of chunks (their JSON texts joined by ','): a long history then loads as few, large
-- elements (the client's reply parsing costs per element), and msgs keeps the recent tail.
local function compact(K, loose)
  while loose >= 2 * CHUNK do
    redis.call('RPUSH', K[5], table.concat(redis.call('LPOP', K[4], CHUNK), ','))
    loose = loose - CHUNK
  end
end
local function push(K, A, first)  -- RPUSH A[first..] (in calls of 1000), then compact
  local loose = redis.call('LLEN', K[4])
  for i = first, #A, 1000 do
    loose = redis.call('RPUSH', K[4], unpack(A, i, math.min(i + 999, #A)))
  end
  compact(K, loose)
end
local function put_metadata(K, A, pos)
  for i = 1, tonumber(A[pos]) do
    local at = pos + 3 * i - 2
    redis.call('HSET', K[2], A[at], A[at + 1])
    redis.call('HSET', K[3], A[at], A[at + 2])
  end
  return pos + 3 * tonumber(A[pos]) + 1
end
local function raise_score(meta, score, stamp)
  local cur = redis.call('HGET', meta, 'score')
  if cur and tonumber(cur) >= tonumber(score) then return cur end
  redis.call('HSET', meta, 'score', score, 'last_updated', stamp)
  return score
end

-- ARGV[4] nonce, [5] created_at, [6] updated_at, [7] last_updated, [8] score, [9] title,
-- [10] context, [11] n metadata entries, then n (key, json, token) triples, then messages.
local function create(K, A)
  if redis.call('EXISTS', K[1]) == 1 then
    if redis.call('HGET', K[1], 'nonce') == A[4] then  -- our own create, retried
      redis.call('HSET', K[1], 'nonce', A[4])  -- a write, so that a WAIT after it covers the create
      return {1, redis.call('HGET', K[1], 'ver'), redis.call('HVALS', K[3])}
    end
    return {0}
  end
  redis.call('DEL', K[2], K[3], K[4], K[5])
  local first = put_metadata(K, A, 11)
  push(K, A, first)
  redis.call('HSET', K[1], 'created_at', A[5], 'updated_at', A[6], 'last_updated', A[7],
    'score', A[8], 'title', A[9], 'context', A[10], 'count', #A - first + 1, 'nonce', A[4],
    'ver', next_ver(K[1]))
  touch(K, tonumber(A[3]))
  return {1, redis.call('HGET', K[1], 'ver'), redis.call('HVALS', K[3])}
end

-- ARGV[4] nonce, [5] score, [6] last_updated, then the messages. Four calls (plus EXPIREs).
local function append(K, A)
  local head = redis.call('HMGET', K[1], 'score', 'count', 'acks')
  if not head[1] then return {-1} end
  local acks = head[3] or ''
  if string.find(acks, A[4], 1, true) then  -- a retry of an applied append
    redis.call('HSET', K[1], 'acks', acks)  -- a write, so that a WAIT after it covers the append
    return {2, head[1]}
  end
  if #A <= 1006 then compact(K, redis.call('RPUSH', K[4], unpack(A, 7))) else push(K, A, 7) end
  local score, stamp = head[1], nil
  if tonumber(A[5]) > tonumber(score) then score, stamp = A[5], A[6] end
  acks = string.sub(A[4] .. ',' .. acks, 1, 17 * ACKS)
  if stamp then
    redis.call('HSET', K[1], 'count', tonumber(head[2]) + #A - 6, 'acks', acks, 'score', score,
      'last_updated', stamp)
  else
    redis.call('HSET', K[1], 'count', tonumber(head[2]) + #A - 6, 'acks', acks)
  end
  touch(K, tonumber(A[3]))
  return {1, score}
end

-- ARGV[4] updated_at, [5] its score, [6] n entries, then n (key, json, token) triples.
local function update(K, A)
  if redis.call('EXISTS', K[1]) == 0 then return {-1} end
  put_metadata(K, A, 6)
  redis.call('HSET', K[1], 'updated_at', A[4])
  local score = raise_score(K[1], A[5], A[4])
  redis.call('HSET', K[1], 'ver', next_ver(K[1]))
  touch(K, tonumber(A[3]))
  return {1, redis.call('HGET', K[1], 'ver'), redis.call('HVALS', K[3]), score}
end

local function delete(K, A)
  local existed = redis.call('EXISTS', K[1])
  redis.call('DEL', K[1], K[2], K[3], K[4], K[5])
  return {existed}
end
"""

# Helpers for the index (all keys in the {#index} slot, built from the index prefix).
_INDEX_LIB = """
local function rank(ix, score)  -- updated_at in ms, then the order of writes within a ms
  local seq = redis.call('INCR', ix .. 'seq') % 1000
  return string.format('%.0f', math.floor(tonumber(score) * 1000 + 0.5) * 1000 + seq)
end
local function index_touch(ix, id, score)
  redis.call('ZADD', ix .. 'updated', 'GT', rank(ix, score), id)
end
local function index_sync(ix, id, ver, score, zmode, toks, force)
  if zmode == 'gt' then index_touch(ix, id, score)
  else redis.call('ZADD', ix .. 'updated', rank(ix, score), id) end
  local cur = tonumber(redis.call('HGET', ix .. 'ver', id) or '0')
  if not force and tonumber(ver) <= cur then return end  -- a newer state is indexed already
  redis.call('HSET', ix .. 'ver', id, ver)
  local of = ix .. 'of:' .. id
  local want = {}
  for _, t in ipairs(toks) do want[t] = true end
  for _, t in ipairs(redis.call('SMEMBERS', of)) do
    if not want[t] then
      redis.call('SREM', ix .. 'md:' .. t, id)
      redis.call('SREM', of, t)
    end
  end
  for _, t in ipairs(toks) do
    redis.call('SADD', ix .. 'md:' .. t, id)
    redis.call('SADD', of, t)
  end
end
local function index_drop(ix, id, score)
  if score ~= '' then  -- only the entry that was seen dead, not a session re-created since
    local cur = redis.call('ZSCORE', ix .. 'updated', id)
    if cur and tonumber(cur) ~= tonumber(score) then return 0 end
  end
  redis.call('ZREM', ix .. 'updated', id)
  redis.call('HDEL', ix .. 'ver', id)
  local of = ix .. 'of:' .. id
  for _, t in ipairs(redis.call('SMEMBERS', of)) do redis.call('SREM', ix .. 'md:' .. t, id) end
  redis.call('DEL', of)
  return 1
end
"""


SESSION_CREATE = _SESSION_LIB + "return create(session_keys(KEYS[1]), ARGV)"
SESSION_APPEND = _SESSION_LIB + "return append(session_keys(KEYS[1]), ARGV)"
SESSION_UPDATE = _SESSION_LIB + "return update(session_keys(KEYS[1]), ARGV)"
SESSION_DELETE = _SESSION_LIB + "return delete(session_keys(KEYS[1]), ARGV)"


def _single(operation: str, then: str) -> str:
    """A script for a single server: the session operation, then the index kept with it."""
    return (
        _SESSION_LIB
        + _INDEX_LIB
        + f"""
local r = {operation}(session_keys(KEYS[1]), ARGV)
{then}
return r"""
    )


SINGLE_CREATE = _single(
    "create", "if r[1] == 1 then index_sync(ARGV[1], ARGV[2], r[2], ARGV[8], 'set', r[3], false) end"
)
SINGLE_APPEND = _single("append", "if r[1] == 1 then index_touch(ARGV[1], ARGV[2], r[2]) end")
SINGLE_UPDATE = _single(
    "update", "if r[1] == 1 then index_sync(ARGV[1], ARGV[2], r[2], r[4], 'gt', r[3], false) end"
)
SINGLE_DELETE = _single("delete", "index_drop(ARGV[1], ARGV[2], '')")

# KEYS[1] <ix>updated; ARGV: ix, id, ver, score, zmode ('set'|'gt'), force ('0'|'1'), tokens...
INDEX_SYNC = (
    _INDEX_LIB
    + """
local toks = {}
for i = 7, #ARGV do toks[#toks + 1] = ARGV[i] end
index_sync(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], toks, ARGV[6] == '1')
return 1"""
)

# KEYS[1] <ix>updated; ARGV: ix, id, score (epoch seconds).
INDEX_TOUCH = _INDEX_LIB + "index_touch(ARGV[1], ARGV[2], ARGV[3])\nreturn 1"

# KEYS[1] <ix>updated; ARGV: ix, then (id, score seen) pairs ('' score: drop unconditionally).
INDEX_DROP = (
    _INDEX_LIB
    + """
local n = 0
for i = 2, #ARGV, 2 do n = n + index_drop(ARGV[1], ARGV[i], ARGV[i + 1]) end
return n"""
)

# KEYS[1] <prefix>{<id>}:; ARGV[1]: 'all', or n for the elements holding the last n messages.
# Returns {meta, md, chunk and message texts in order}, or {} if there is no such session.
READ = """
local base, CHUNK = KEYS[1], 100
local meta = redis.call('HGETALL', base .. 'meta')
if #meta == 0 then return {} end
local texts = {}
local n = tonumber(ARGV[1])
if ARGV[1] == 'all' then
  texts = redis.call('LRANGE', base .. 'chunks', 0, -1)
elseif n > 0 then
  local loose = redis.call('LLEN', base .. 'msgs')
  if n > loose then texts = redis.call('LRANGE', base .. 'chunks', -math.ceil((n - loose) / CHUNK), -1) end
end
if ARGV[1] == 'all' or (n and n > 0) then
  local first = ARGV[1] == 'all' and 0 or -n
  for _, text in ipairs(redis.call('LRANGE', base .. 'msgs', first, -1)) do texts[#texts + 1] = text end
end
return {meta, redis.call('HGETALL', base .. 'md'), texts}
"""

# What changed since a cursor (the warm history's refresh), one consistent snapshot.
# ARGV[1] nonce and [2] created_at of the session read (its identity), [3] its count then,
# [4] the most messages to return, [5] its metadata version then. Returns {1, head, texts}
# (only the messages appended since; + meta and md hashes when the metadata changed), or
# {0, head, texts, meta, md} with the last ARGV[4] messages; head: nonce, created_at,
# count, ver. {} if the session does not exist.
CHANGES = """
local base, CHUNK = KEYS[1], 100
local head = redis.call('HMGET', base .. 'meta', 'nonce', 'created_at', 'count', 'ver')
if not head[3] then return {} end
local n = tonumber(ARGV[4])
if (head[1] or '') == ARGV[1] and head[2] == ARGV[2] then
  local new = tonumber(head[3]) - tonumber(ARGV[3])
  if new >= 0 and new <= n and new <= redis.call('LLEN', base .. 'msgs') then
    local texts = {}
    if new > 0 then texts = redis.call('LRANGE', base .. 'msgs', -new, -1) end
    if (head[4] or '') == ARGV[5] then return {1, head, texts} end
    return {1, head, texts, redis.call('HGETALL', base .. 'meta'), redis.call('HGETALL', base .. 'md')}
  end
end
local texts = {}
if n > 0 then
  local loose = redis.call('LLEN', base .. 'msgs')
  if n > loose then texts = redis.call('LRANGE', base .. 'chunks', -math.ceil((n - loose) / CHUNK), -1) end
  for _, text in ipairs(redis.call('LRANGE', base .. 'msgs', -n, -1)) do texts[#texts + 1] = text end
end
return {0, head, texts, redis.call('HGETALL', base .. 'meta'), redis.call('HGETALL', base .. 'md')}
"""

# KEYS: <ix>updated, then the filter's <ix>md:<token> sets. ARGV[1] how many of the newest
# matches to skip, ARGV[2] how many to return. Returns id, score, id, score... newest first.
# A broad filter walks the sorted set from the newest, testing membership (about
# (skip + count) * N / M entries for M matches of N); a narrow one intersects (ZINTER,
# O(M log M)). The walk is chosen when it is expected to be cheaper: M * M > (skip + count) * N.
FILTER_PAGE = """
local skip, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
local m = n
for k = 2, #KEYS do m = math.min(m, redis.call('SCARD', KEYS[k])) end
local out = {}
if m * m > (skip + count) * n then
  local pos, found = 0, 0
  while #out < 2 * count and pos < n do
    local chunk = redis.call('ZREVRANGE', KEYS[1], pos, pos + 4 * count - 1, 'WITHSCORES')
    if #chunk == 0 then break end
    pos = pos + #chunk / 2
    for i = 1, #chunk, 2 do
      local ok = true
      for k = 2, #KEYS do
        if redis.call('SISMEMBER', KEYS[k], chunk[i]) == 0 then ok = false break end
      end
      if ok then
        found = found + 1
        if found > skip and #out < 2 * count then
          out[#out + 1] = chunk[i]
          out[#out + 1] = chunk[i + 1]
        end
      end
    end
  end
  return out
end
local cmd = {'ZINTER', #KEYS}
for _, key in ipairs(KEYS) do cmd[#cmd + 1] = key end
cmd[#cmd + 1] = 'AGGREGATE'
cmd[#cmd + 1] = 'MAX'
cmd[#cmd + 1] = 'WITHSCORES'
local r = redis.call(unpack(cmd))
local first = #r / 2 - skip
for i = first, math.max(1, first - count + 1), -1 do
  out[#out + 1] = r[2 * i - 1]
  out[#out + 1] = r[2 * i]
end
return out
"""
