-- Everything stored about one user, in one atomic snapshot (export, and step 1 of a merge).
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4..] the user's
-- idempotency records (found by the caller with SCAN on the user's hash tag)
-- Returns {prefs fields, conversion fields, conversions PTTL, ledger member/score pairs,
--          ledger PTTL, record value/PTTL pairs (false, -2 for a record gone since the SCAN)}
local records = {}
for i = 4, #KEYS do
  local value = redis.call('GET', KEYS[i])
  records[#records + 1] = value
  records[#records + 1] = value and redis.call('PTTL', KEYS[i]) or -2
end
return {redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]), redis.call('PTTL', KEYS[3]),
        redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('PTTL', KEYS[1]), records}
