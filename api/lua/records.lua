-- Some idempotency records of one user (GET /v1/decisions/{id}, the timeline).
-- KEYS[1] the records hash, KEYS[1 + i] message i's record key of a previous release
-- ARGV[1] now (ms), ARGV[1 + i] message i's id
-- Returns one record per message, false when there is none (or it has expired): field
-- ARGV[1 + i] of KEYS[1] is "<expiry ms> <record>" (api/keys.py), else KEYS[1 + i].
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local rec = false
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local sp = string.find(v, ' ', 1, true)
    if tonumber(string.sub(v, 1, sp - 1)) > now then rec = string.sub(v, sp + 1) end
  end
  if not rec then rec = redis.call('GET', KEYS[i]) end
  out[i - 1] = rec
end
return out
