-- Apply one user's opt-outs and conversions atomically and bump the preferences revision, so
-- a decision that read the old state is retried by its commit.
-- KEYS[1] prefs hash, KEYS[2] conversions hash
-- ARGV[1] conversions TTL (ms), then triples: kind ('o' opt-out | 'c' conversion), name, ms
-- Returns the new revision, or {'moved', id} (nothing written) when the user was merged
-- into that id: the events are the person's, the caller applies them there.
local moved = redis.call('HGET', KEYS[1], 'moved_into')
if moved then return {'moved', moved} end
local changed = false
for i = 2, #ARGV, 3 do
  if ARGV[i] == 'o' then
    redis.call('HSET', KEYS[1], 'optout:' .. ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    redis.call('PEXPIRE', KEYS[2], ARGV[1])
  end
  changed = true
end
if changed then return redis.call('HINCRBY', KEYS[1], 'rev', 1) end
return 0
