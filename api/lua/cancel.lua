-- Release a reservation. KEYS[1] ledger, KEYS[2] idempotency records hash, KEYS[3] this
-- message's record key of a previous release (api/keys.py)
-- ARGV[1] the bytes every ledger member of the message starts with, ARGV[2] now (ms),
-- ARGV[3] message id; members are compared from the second byte on (the array header
-- differs between member layouts)
-- Returns {status, removed, record}: status 'cancelled' | 'already' | 'ledger' | 'missing'
-- A record is field ARGV[3] of KEYS[2], "<expiry ms> <record>" (past its expiry: not
-- there), or else KEYS[3]; the cancellation is appended where it was found, same expiry:
-- a third line (JSON records), or a third element (format 6: a MessagePack array whose
-- header byte says 2 elements, 0x92, or 3 once cancelled, 0x93; api/render.py). A format-6
-- record followed by "\n<ms>" was cancelled by a release before format 6 (it appends a line
-- to any record): already cancelled.
local now = tonumber(ARGV[2])
local head, rec = nil, false
local v = redis.call('HGET', KEYS[2], ARGV[3])
if v then
  local sp = string.find(v, ' ', 1, true)
  if tonumber(string.sub(v, 1, sp - 1)) > now then
    head, rec = string.sub(v, 1, sp), string.sub(v, sp + 1)
  end
end
if not rec then rec = redis.call('GET', KEYS[3]) end
local first = rec and string.byte(rec, 1)
local packed = first == 0x92 or first == 0x93
if packed then
  if first == 0x93 then return {'already', 0, rec} end
  -- bytes after the outcome: a release before format 6 cancelled it ("\n<ms>" appended).
  -- A record that does not parse (damaged: api/render.py UnreadableRecordError) is
  -- cancelled like a readable one: the reservation is what a cancel is for
  local ok, at = pcall(cmsgpack.unpack_one, rec, 1)
  if ok and at ~= -1 then ok, at = pcall(cmsgpack.unpack_one, rec, at) end
  if ok and at ~= -1 then return {'already', 0, rec} end
elseif rec then
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
  if packed then
    rec = '\147' .. string.sub(rec, 2) .. cmsgpack.pack(now)
  else
    rec = rec .. '\n' .. ARGV[2]
  end
  if head then
    redis.call('HSET', KEYS[2], ARGV[3], head .. rec)
  else
    redis.call('SET', KEYS[3], rec, 'KEEPTTL')
  end
  return {'cancelled', removed, rec}
end
if removed > 0 then return {'ledger', removed, false} end
return {'missing', 0, false}
