-- Release a reservation. KEYS[1] ledger, KEYS[2] idempotency record
-- ARGV[1] the bytes every ledger member of the message starts with, ARGV[2] now (ms);
-- compared from the second byte on (the array header differs between member layouts)
-- Returns {status, removed, record}: status 'cancelled' | 'already' | 'ledger' | 'missing'
local rec = redis.call('GET', KEYS[2])
if rec then
  local lines = 0
  for _ in string.gmatch(rec, '\n') do lines = lines + 1 end
  if lines >= 2 then return {'already', 0, rec} end
end
local removed = 0
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
local body = string.sub(ARGV[1], 2)
for _, member in ipairs(all) do
  if string.sub(member, 2, #body + 1) == body then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
if rec then
  rec = rec .. '\n' .. ARGV[2]
  redis.call('SET', KEYS[2], rec, 'KEEPTTL')
  return {'cancelled', removed, rec}
end
if removed > 0 then return {'ledger', removed, false} end
return {'missing', 0, false}
