"""The Lua scripts of the redis store: one per operation, each one atomic round trip.

Every session script receives the session's keys, all in its ``{<id>}`` hash slot::

    KEYS[1] <prefix>{<id>}:meta   hash: created_at, updated_at, last_updated, score, title,
                                  context, count, nonce, ver
    KEYS[2] <prefix>{<id>}:md     hash: metadata key -> JSON value
    KEYS[3] <prefix>{<id>}:tok    hash: metadata key -> index token of (key, value)
    KEYS[4] <prefix>{<id>}:msgs   list of JSON messages
    KEYS[5] <prefix>{<id>}:acks   the last 64 append nonces (makes a retried append a no-op)

and ``ARGV[1]`` the index prefix (``<prefix>{#index}:``), ``ARGV[2]`` the session id,
``ARGV[3]`` the TTL in seconds (0: none). The index keys all live in the ``{#index}`` slot
(``#`` never occurs in a session id)::

    <ix>updated      sorted set: session id -> rank: updated_at in ms * 1000, plus a counter
                     (<ix>seq, mod 1000) that orders the writes made within one ms
    <ix>ver          hash: session id -> version of the metadata last indexed
    <ix>md:<token>   set of the ids whose metadata holds that (key, value)
    <ix>of:<id>      set of the tokens indexed for one session (to undo them)

On a single server the index update runs inside the same script (``SINGLE_*``); on a
cluster it is a second script on the index slot (``SESSION_*`` then ``INDEX_*``).
"""

from __future__ import annotations

# Helpers for the session scripts.
_SESSION_LIB = """
local function touch(K, ttl)
  for i = 1, 5 do
    if ttl > 0 then redis.call('EXPIRE', K[i], ttl) else redis.call('PERSIST', K[i]) end
  end
end
local function next_ver(meta)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local prev = tonumber(redis.call('HGET', meta, 'ver') or '0')
  if now <= prev then now = prev + 1 end
  return string.format('%.0f', now)
end
local function push(key, A, first)
  for i = first, #A, 1000 do
    redis.call('RPUSH', key, unpack(A, i, math.min(i + 999, #A)))
  end
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
      return {1, redis.call('HGET', K[1], 'ver'), redis.call('HVALS', K[3])}
    end
    return {0}
  end
  redis.call('DEL', K[2], K[3], K[4], K[5])
  local first = put_metadata(K, A, 11)
  push(K[4], A, first)
  redis.call('HSET', K[1], 'created_at', A[5], 'updated_at', A[6], 'last_updated', A[7],
    'score', A[8], 'title', A[9], 'context', A[10], 'count', #A - first + 1, 'nonce', A[4],
    'ver', next_ver(K[1]))
  touch(K, tonumber(A[3]))
  return {1, redis.call('HGET', K[1], 'ver'), redis.call('HVALS', K[3])}
end

-- ARGV[4] nonce, [5] score, [6] last_updated, then the messages.
local function append(K, A)
  if redis.call('EXISTS', K[1]) == 0 then return {-1} end
  if redis.call('LPOS', K[5], A[4], 'MAXLEN', 64) then  -- a retry of an applied append
    return {2, redis.call('HGET', K[1], 'score')}
  end
  push(K[4], A, 7)
  redis.call('HINCRBY', K[1], 'count', #A - 6)
  local score = raise_score(K[1], A[5], A[6])
  redis.call('LPUSH', K[5], A[4])
  redis.call('LTRIM', K[5], 0, 63)
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


SESSION_CREATE = _SESSION_LIB + "return create(KEYS, ARGV)"
SESSION_APPEND = _SESSION_LIB + "return append(KEYS, ARGV)"
SESSION_UPDATE = _SESSION_LIB + "return update(KEYS, ARGV)"
SESSION_DELETE = _SESSION_LIB + "return delete(KEYS, ARGV)"

SINGLE_CREATE = (
    _SESSION_LIB
    + _INDEX_LIB
    + """
local r = create(KEYS, ARGV)
if r[1] == 1 then index_sync(ARGV[1], ARGV[2], r[2], ARGV[8], 'set', r[3], false) end
return r"""
)
SINGLE_APPEND = (
    _SESSION_LIB
    + _INDEX_LIB
    + """
local r = append(KEYS, ARGV)
if r[1] == 1 then index_touch(ARGV[1], ARGV[2], r[2]) end
return r"""
)
SINGLE_UPDATE = (
    _SESSION_LIB
    + _INDEX_LIB
    + """
local r = update(KEYS, ARGV)
if r[1] == 1 then index_sync(ARGV[1], ARGV[2], r[2], r[4], 'gt', r[3], false) end
return r"""
)
SINGLE_DELETE = (
    _SESSION_LIB
    + _INDEX_LIB
    + """
local r = delete(KEYS, ARGV)
index_drop(ARGV[1], ARGV[2], '')
return r"""
)

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

# KEYS: meta, md, msgs; ARGV[1]: first message index ('0' all, '-n' the last n, 'none').
READ = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return {} end
local msgs = {}
if ARGV[1] ~= 'none' then msgs = redis.call('LRANGE', KEYS[3], tonumber(ARGV[1]), -1) end
return {meta, redis.call('HGETALL', KEYS[2]), msgs}
"""
