-- Erase one user: every key with the user's hash tag, counted by kind before it goes.
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4..] every other
-- key of the user (idempotency records, and any kind a later version adds)
-- ARGV[1] the prefix of the user's record keys of a previous release, ARGV[2] the user's
-- idempotency records hash (its fields but '' are records: api/keys.py), ARGV[3] now (ms)
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
  if KEYS[i] == ARGV[2] then  -- the records not yet expired
    local all = redis.call('HGETALL', KEYS[i])
    for j = 1, #all, 2 do
      if all[j] ~= '' and tonumber(string.match(all[j + 1], '^%d+')) > tonumber(ARGV[3]) then
        records = records + 1
      end
    end
  end
  local n = redis.call('DEL', KEYS[i])
  removed = removed + n
  if string.sub(KEYS[i], 1, #ARGV[1]) == ARGV[1] then records = records + n end
end
removed = removed + redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {ledger, optouts, doc, conv, records, removed}
