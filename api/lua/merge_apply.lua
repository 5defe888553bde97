-- Merge step 2, on the target user: fold the source's snapshot in, atomically and
-- idempotently (applying the same snapshot twice leaves the same state: the ledger is a set,
-- records are only added where the target has none, opt-outs keep the earliest instant,
-- conversions the latest, and the merged preference document is a join the caller computed
-- against revision ARGV[1]).
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4] the target's
-- idempotency records hash, KEYS[5..] the target's record keys of a previous release for
-- the source's records, in the order of the record triples below
-- ARGV[1] the target revision the document was merged against, ARGV[2] merged document JSON
-- ('' keeps the target's), ARGV[3] source user id, ARGV[4] now (ms), ARGV[5] source ledger
-- PTTL, ARGV[6] source conversions PTTL, ARGV[7..9] counts of opt-out, conversion and
-- ledger pairs, then those pairs (channel ms, campaign ms, member score), then the source's
-- merged_from count and names, then one (message id, record, PTTL) triple per record
-- (PTTL -1: a record without expiry, kept for 10 years)
-- Returns {'ok', ledger entries added, records added, revision}
--       | {'stale', revision} | {'moved', where the target itself was merged}
local moved = redis.call('HGET', KEYS[2], 'moved_into')
if moved then return {'moved', moved} end
local rev = redis.call('HGET', KEYS[2], 'rev') or '0'
if rev ~= ARGV[1] then return {'stale', rev} end

local changed = false
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'doc') ~= ARGV[2] then
  redis.call('HSET', KEYS[2], 'doc', ARGV[2])
  changed = true
end
local i = 10
for _ = 1, tonumber(ARGV[7]) do
  local field = 'optout:' .. ARGV[i]
  local cur = redis.call('HGET', KEYS[2], field)
  if not cur or tonumber(ARGV[i + 1]) < tonumber(cur) then
    redis.call('HSET', KEYS[2], field, ARGV[i + 1])
    changed = true
  end
  i = i + 2
end
local function extend(key, want)
  want = tonumber(want)
  if want > 0 and redis.call('PTTL', key) < want then redis.call('PEXPIRE', key, want) end
end
for _ = 1, tonumber(ARGV[8]) do
  local cur = redis.call('HGET', KEYS[3], ARGV[i])
  if not cur or tonumber(ARGV[i + 1]) > tonumber(cur) then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    changed = true
  end
  i = i + 2
end
if tonumber(ARGV[8]) > 0 then extend(KEYS[3], ARGV[6]) end
local added = 0
for _ = 1, tonumber(ARGV[9]) do
  added = added + redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
  i = i + 2
end
if tonumber(ARGV[9]) > 0 then extend(KEYS[1], ARGV[5]) end
redis.call('HSETNX', KEYS[2], 'merged_from:' .. ARGV[3], ARGV[4])
local n_from = tonumber(ARGV[i])
for j = i + 1, i + n_from do redis.call('HSETNX', KEYS[2], 'merged_from:' .. ARGV[j], ARGV[4]) end
i = i + n_from + 1
-- a record is field <message id> of KEYS[4], "<expiry ms> <record>" (api/keys.py); field
-- '' = "<earliest record expiry> <the hash's expiry>" (commit.lua trims from the first; the
-- hash's expiry is never before any record's)
local now = tonumber(ARGV[4])
local records = 0
for k = 5, #KEYS do
  local pttl = tonumber(ARGV[i + 2])
  if pttl == -1 then pttl = 315360000000 end
  local cur = redis.call('HGET', KEYS[4], ARGV[i])
  local taken = redis.call('EXISTS', KEYS[k]) == 1
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    taken = taken or tonumber(string.sub(cur, 1, sp - 1)) > now
  end
  if pttl > 0 and not taken then
    local exp = now + pttl
    local first, last = exp, exp
    local meta = redis.call('HGET', KEYS[4], '')
    if meta then
      local sp = string.find(meta, ' ', 1, true)
      first = math.min(exp, tonumber(string.sub(meta, 1, sp - 1)))
      last = math.max(exp, tonumber(string.sub(meta, sp + 1)))
    end
    redis.call('HSET', KEYS[4], ARGV[i], string.format('%.0f', exp) .. ' ' .. ARGV[i + 1], '',
               string.format('%.0f', first) .. ' ' .. string.format('%.0f', last))
    if last == exp then redis.call('PEXPIRE', KEYS[4], pttl) end
    records = records + 1
  end
  i = i + 3
end
if changed or added > 0 then rev = tostring(redis.call('HINCRBY', KEYS[2], 'rev', 1)) end
return {'ok', added, records, rev}
