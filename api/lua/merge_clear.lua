-- Merge step 3, on the source user: drop what step 2 copied to the target. Only the
-- tombstone (moved_into) and the revision stay: the revision is bumped, never reset, so a
-- decision that read the source before the merge can never match it again.
-- KEYS[1] ledger zset, KEYS[2] prefs hash, KEYS[3] conversions hash, KEYS[4..] the records
-- hash and the record keys of a previous release (api/keys.py)
-- ARGV[1] target user id. Returns the number of keys removed, or -1 if the source is not
-- marked as merged into ARGV[1] (nothing is removed then).
if redis.call('HGET', KEYS[2], 'moved_into') ~= ARGV[1] then return -1 end
local removed = 0
for i = 4, #KEYS do removed = removed + redis.call('DEL', KEYS[i]) end
removed = removed + redis.call('DEL', KEYS[1], KEYS[3])
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if field ~= 'rev' and field ~= 'moved_into' then redis.call('HDEL', KEYS[2], field) end
end
redis.call('HINCRBY', KEYS[2], 'rev', 1)
return removed
