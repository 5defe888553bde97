-- Read everything a decision needs about one user, in one round trip.
-- KEYS[1] prefs hash, KEYS[2] idempotency records hash, KEYS[3] conversions hash
-- KEYS[4] send-time profile hash: its serialised profile is the 4th reply
-- KEYS[5] this message's record key of a previous release (read when the hash has none)
-- ARGV[1] campaign id ('' when the message has none), ARGV[2] message id, ARGV[3] now (ms)
local conv = false
if ARGV[1] ~= '' then
  conv = redis.call('HGET', KEYS[3], ARGV[1])
end
-- a record is "<expiry ms> <record>" (api/keys.py); one past its expiry is not there
local rec = redis.call('HGET', KEYS[2], ARGV[2])
if rec then
  local sp = string.find(rec, ' ', 1, true)
  if tonumber(string.sub(rec, 1, sp - 1)) > tonumber(ARGV[3]) then
    rec = string.sub(rec, sp + 1)
  else
    rec = false
  end
end
if not rec then rec = redis.call('GET', KEYS[5]) end
return {redis.call('HGETALL', KEYS[1]), rec, conv, redis.call('HGET', KEYS[4], 'p')}
