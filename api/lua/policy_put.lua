-- Replace a tenant's policy with optimistic concurrency.
-- KEYS[1] policy hash; ARGV[1] expected version ('' = any), ARGV[2] doc JSON, ARGV[3] now
-- Returns {'ok', new_version} | {'conflict', current_version}
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {'conflict', cur} end
local new = cur + 1
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', new, 'updated_at', ARGV[3])
return {'ok', new}
