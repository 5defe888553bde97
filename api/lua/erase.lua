-- Erase one user: every key with the user's hash tag, counted by kind before it goes.
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4..] every other
-- key of the user (idempotency records, and any kind a later version adds)
-- ARGV[1] the prefix of the user's idempotency record keys
-- Returns {ledger entries, event opt-outs, preference document (0/1), conversions,
--          idempotency records, keys removed}
local optouts, doc = 0, 0
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 7) == 'optout:' then optouts = optouts + 1 end
  if field == 'doc' then doc = 1 end
end
local ledger = redis.call('ZCARD', KEYS[1])
local conv = redis.call('HLEN', KEYS[3])
local records, removed = 0, 0
for i = 4, #KEYS do
  local n = redis.call('DEL', KEYS[i])
  removed = removed + n
  if string.sub(KEYS[i], 1, #ARGV[1]) == ARGV[1] then records = records + n end
end
removed = removed + redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {ledger, optouts, doc, conv, records, removed}
