-- Read everything a decision needs about one user, in one round trip.
-- KEYS[1] prefs hash, KEYS[2] idempotency record, KEYS[3] conversions hash
-- KEYS[4] (optional) send-time profile hash: its serialised profile is the 4th reply
-- ARGV[1] campaign id ('' when the message has none)
local conv = false
if ARGV[1] ~= '' then
  conv = redis.call('HGET', KEYS[3], ARGV[1])
end
local profile = false
if KEYS[4] then profile = redis.call('HGET', KEYS[4], 'p') end
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]), conv, profile}
