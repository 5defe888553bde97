-- Everything stored about one user, in one atomic snapshot (export, and step 1 of a merge).
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4] idempotency
-- records hash, KEYS[5..] the user's record keys of a previous release (found by the caller
-- with SCAN on the user's hash tag); ARGV[1] now (ms)
-- Returns {prefs fields, conversion fields, conversions PTTL, ledger member/score pairs,
--          ledger PTTL, legacy record value/PTTL pairs (false, -2 for a record gone since
--          the SCAN), hashed record message id/value/remaining ms triples}
-- (a hashed record is "<expiry ms> <record>", api/keys.py; expired ones are left out)
local now = tonumber(ARGV[1])
local records = {}
for i = 5, #KEYS do
  local value = redis.call('GET', KEYS[i])
  records[#records + 1] = value
  records[#records + 1] = value and redis.call('PTTL', KEYS[i]) or -2
end
local hashed = {}
local all = redis.call('HGETALL', KEYS[4])
for i = 1, #all, 2 do
  if all[i] ~= '' then
    local v = all[i + 1]
    local sp = string.find(v, ' ', 1, true)
    local left = tonumber(string.sub(v, 1, sp - 1)) - now
    if left > 0 then
      hashed[#hashed + 1] = all[i]
      hashed[#hashed + 1] = string.sub(v, sp + 1)
      hashed[#hashed + 1] = string.format('%.0f', left)
    end
  end
end
return {redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]), redis.call('PTTL', KEYS[3]),
        redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('PTTL', KEYS[1]), records,
        hashed}
