-- Compare-and-set of one user's send-time profile (api/profiles.py computes the new value
-- with models.profile's update rule; the rule lives only there, never in Lua).
-- KEYS[1] profile hash
-- ARGV[1] the revision the new value was computed from ('0' for a new profile)
-- ARGV[2] profile bytes, ARGV[3] recent event fingerprints, ARGV[4] engaged-message
-- fingerprints, ARGV[5] time to live (ms), ARGV[6] (optional) a marker field set to '1'
-- in the same write (a merge records the id it folded in, so a retry does not fold twice)
-- Returns 1 when written, 0 when another writer got there first (the caller re-reads).
local rev = redis.call('HGET', KEYS[1], 'rev') or '0'
if rev ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2], 'seen', ARGV[3], 'eng', ARGV[4],
           'rev', tostring(tonumber(rev) + 1))
if ARGV[6] then redis.call('HSET', KEYS[1], ARGV[6], '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
