-- Remove a tenant's shadow policy and its report (the version counter stays).
-- KEYS as shadow_put.lua; ARGV[1] expected shadow version ('' = any)
-- Returns {'ok', version} | {'missing', version} | {'conflict', version}
local cur = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if redis.call('HEXISTS', KEYS[2], 'doc') == 0 then return {'missing', cur} end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {'conflict', cur} end
redis.call('HDEL', KEYS[2], 'doc', 'installed_at', 'sample_rate')
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[1], 'shadow')
return {'ok', cur}
