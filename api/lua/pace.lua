-- Channel send-rate pacing for one shard of one (tenant, channel) (docs/pacing.md). Every key
-- carries the hash tag {tenant:channel:shard}: one slot, so the check and the increment cannot
-- race, and no script ever crosses slots.
--
-- KEYS[1] counts HASH "<g>:<k>" -> sends reserved in bucket k of length g ms ([k*g, (k+1)*g)),
--                     and "lo:<g>" / "hi:<g>": a run [lo, hi) of consecutive full buckets
-- KEYS[2] index  ZSET the same fields scored by their bucket's end (bounded trimming)
-- KEYS[3] starts ZSET "<who>:<ms>" scored by ms: conversation starts (unique recipients)
-- KEYS[4] latest ZSET who -> latest conversation start (ms): the cheap common lookup
--
-- ARGV[1] mode: 'reserve' (search from t, take the first instant with capacity),
--         'peek' (the same search, nothing written: dry runs), 'release' (give back t's
--         rate tokens). Nothing ever counts over a share: no mode takes a full bucket.
-- ARGV[2] t, ARGV[3] search end (exclusive), ARGV[4] now, ARGV[5] max search steps,
-- ARGV[6] number of rate limits R, then R triples (bucket length ms, this shard's share, name),
-- then the unique-recipient limit: window ms (0: none), this shard's share, who (pseudonym),
-- name.
--
-- Returns {status, instant, name}: 'ok' with the first instant >= t that has capacity (and
-- the name of the limit that first pushed the search on, '' if none), 'none' with the instant
-- the bounded search stopped at, 'released'.
--
-- A rolling limit of n per W (unique recipients) blocks x iff n existing starts plus x fit in
-- a span shorter than W: for n consecutive starts e_a..e_{a+n-1} (span < W) that is exactly
-- x in [e_{a+n-1} - W + 1, e_a + W), the same arithmetic as commit.lua's rolling caps.

local mode = ARGV[1]
local t = tonumber(ARGV[2])
local xend = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local max_steps = tonumber(ARGV[5])
local nrate = tonumber(ARGV[6])
local rates = {}
local p = 7
for i = 1, nrate do
  rates[i] = {g = tonumber(ARGV[p]), cap = tonumber(ARGV[p + 1]), name = ARGV[p + 2]}
  p = p + 3
end
local W = tonumber(ARGV[p])
local ucap = tonumber(ARGV[p + 1])
local who = ARGV[p + 2]
local uname = ARGV[p + 3]

local function fmt(x) return string.format('%.0f', x) end
local function bucket(r, x) return math.floor(x / r.g) end
local function field(r, x) return r.g .. ':' .. fmt(bucket(r, x)) end

-- A run of consecutive full buckets [lo, hi) per bucket length, kept exact by every write
-- below: a search that starts inside it jumps to hi in one step, so a backlog of any length
-- costs O(1) instead of one HGET per full bucket (fields 'lo:<g>', 'hi:<g>' of KEYS[1]).
local function run_of(r)
  if r.lo == nil then
    local v = redis.call('HMGET', KEYS[1], 'lo:' .. r.g, 'hi:' .. r.g)
    r.lo, r.hi = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  end
  return r.lo, r.hi
end
local function set_run(r, lo, hi)
  r.lo, r.hi = lo, hi
  redis.call('HSET', KEYS[1], 'lo:' .. r.g, fmt(lo), 'hi:' .. r.g, fmt(hi))
end
local function count_at(r, b)
  return tonumber(redis.call('HGET', KEYS[1], r.g .. ':' .. fmt(b)) or '0')
end
-- bucket b just became full
local function grow_run(r, b)
  local lo, hi = run_of(r)
  if lo < hi and b == lo - 1 then lo = b
  elseif lo < hi and b == hi then hi = b + 1
  elseif lo >= hi or hi <= math.floor(now / r.g) then lo, hi = b, b + 1
  else return end
  for _ = 1, 64 do  -- absorb full buckets that follow (filled while the run was elsewhere)
    if count_at(r, hi) < r.cap then break end
    hi = hi + 1
  end
  set_run(r, lo, hi)
end
-- bucket b has room again
local function cut_run(r, b)
  local lo, hi = run_of(r)
  if lo <= b and b < hi then set_run(r, lo, b) end
end

-- 1. trim what no instant >= now can use again (bounded: at most 64 buckets per call, and
-- each call adds at most R, so the hash never grows with time). A minute of slack: a worker
-- whose clock lags this one's must still find the counts of the buckets it decides in.
local slack = 60000
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now - slack), 'LIMIT', 0, 64)
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
if W > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now - W - slack))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', fmt(now - W - slack))
end

if mode == 'release' then
  for _, r in ipairs(rates) do
    local f = field(r, t)
    local c = redis.call('HINCRBY', KEYS[1], f, -1)
    if c <= 0 then
      redis.call('HDEL', KEYS[1], f)
      redis.call('ZREM', KEYS[2], f)
    end
    if c < r.cap then cut_run(r, bucket(r, t)) end
  end
  return {'released', fmt(t), ''}
end

-- 2. the recipient's open conversations cost no unique slot: [s, s + W) for each start s of
-- theirs. The latest start (one ZSCORE) answers most lookups; the full list is read only when
-- it does not, together with the other recipients' starts that the blocks come from.
local latest = nil
if W > 0 then
  local s = redis.call('ZSCORE', KEYS[4], who)
  if s then latest = tonumber(s) end
end
-- Loaded for instants [x, x + W]: every start that can share a W-window with one of them
-- lies in (x - W, x + 2W), so the blocks and the recipient's own starts there are exact,
-- and the work is O(starts in 3 W) whatever the search horizon.
local ublocks, mine, loaded_to = nil, nil, nil
local function load_starts(x)
  if ublocks ~= nil and x <= loaded_to then return end
  loaded_to = x + W
  local raw = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. fmt(x - W), '(' .. fmt(x + 2 * W),
                         'WITHSCORES')
  local prefix = who .. ':'
  local times = {}
  mine = {}
  for i = 1, #raw, 2 do
    local at = tonumber(raw[i + 1])
    times[#times + 1] = at
    if string.sub(raw[i], 1, #prefix) == prefix then mine[#mine + 1] = at end
  end
  ublocks = {}
  for a = 1, #times - ucap + 1 do
    local first, last = times[a], times[a + ucap - 1]
    if last - first < W then ublocks[#ublocks + 1] = {last - W + 1, first + W} end
  end
end
local function covered(x)
  if latest ~= nil and latest <= x and x < latest + W then return true end
  load_starts(x)
  for _, s in ipairs(mine) do
    if s <= x and x < s + W then return true end
  end
  return false
end

-- the next instant to try after x, and the limit that forced it; x itself if it has capacity
local function next_candidate(x)
  local nx, why = x, ''
  for _, r in ipairs(rates) do
    local b = bucket(r, x)
    local lo, hi = run_of(r)
    local full_to = nil
    if lo <= b and b < hi then full_to = hi
    elseif count_at(r, b) >= r.cap then full_to = b + 1 end
    if full_to ~= nil and full_to * r.g > nx then nx = full_to * r.g; why = r.name end
  end
  if nx == x and W > 0 and not covered(x) then
    local e = x
    for _, iv in ipairs(ublocks) do
      if iv[1] <= x and x < iv[2] and iv[2] > e then e = iv[2] end
    end
    if e > x then
      -- one of the recipient's own conversations may open before the block ends
      for _, s in ipairs(mine) do
        if s > x and s < e then e = s end
      end
      if latest ~= nil and latest > x and latest < e then e = latest end
      nx = e; why = uname
    end
  end
  return nx, why
end

local function take(x)
  for _, r in ipairs(rates) do
    local f = field(r, x)
    local c = redis.call('HINCRBY', KEYS[1], f, 1)
    if c == r.cap then grow_run(r, bucket(r, x)) end
    if c == 1 then redis.call('ZADD', KEYS[2], fmt((bucket(r, x) + 1) * r.g), f) end
  end
  local keep = 0
  for _, r in ipairs(rates) do if r.g > keep then keep = r.g end end
  if W > 0 and not covered(x) then
    redis.call('ZADD', KEYS[3], fmt(x), who .. ':' .. fmt(x))
    if latest == nil or x > latest then redis.call('ZADD', KEYS[4], fmt(x), who) end
    keep = math.max(keep, W)
  end
  -- every key lives until the last bucket or conversation it holds is over
  local want = x - now + keep + slack
  for i = 1, 4 do
    if redis.call('PTTL', KEYS[i]) < want and redis.call('EXISTS', KEYS[i]) == 1 then
      redis.call('PEXPIRE', KEYS[i], fmt(want))
    end
  end
end

-- 3. bounded search: the first instant >= t where every limit has room
local x, first_why = t, ''
for _ = 1, max_steps do
  if x >= xend then return {'none', fmt(xend), first_why} end
  local nx, why = next_candidate(x)
  if nx == x then
    if mode == 'reserve' then take(x) end
    return {'ok', fmt(x), first_why}
  end
  if first_why == '' then first_why = why end
  x = nx
end
return {'none', fmt(math.min(x, xend)), first_why}
