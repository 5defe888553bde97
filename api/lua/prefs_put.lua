-- Replace a user's preference document. KEYS[1] prefs hash
-- ARGV[1] doc JSON, ARGV[2..] channels explicitly opted in (their event opt-outs are cleared)
-- Returns the new revision, or {'moved', id} (nothing written) when the user was merged
-- into that id: its document lives there now.
local moved = redis.call('HGET', KEYS[1], 'moved_into')
if moved then return {'moved', moved} end
redis.call('HSET', KEYS[1], 'doc', ARGV[1])
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], 'optout:' .. ARGV[i]) end
return redis.call('HINCRBY', KEYS[1], 'rev', 1)
