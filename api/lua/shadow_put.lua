-- Install (or replace) a tenant's shadow policy, with optimistic concurrency on its version.
-- KEYS[1] live policy hash, KEYS[2] shadow hash, KEYS[3] shadow report hash,
-- KEYS[4] shadow samples list (all on the tenant's slot)
-- ARGV[1] expected shadow version ('' = any), ARGV[2] doc JSON, ARGV[3] now (ms),
-- ARGV[4] sample rate
-- Returns {'ok', new_version} | {'conflict', current_version}
--
-- The version counter outlives a removed or promoted shadow, so counts a worker flushes
-- for an old shadow can never land in a newer one's report (shadow_flush.lua checks it).
-- A new shadow starts a new report; the live hash's 'shadow' field tells every worker's
-- policy cache, on its usual once-a-second version check, that a shadow exists.
local cur = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {'conflict', cur} end
local new = cur + 1
redis.call('HSET', KEYS[2], 'doc', ARGV[2], 'version', new, 'installed_at', ARGV[3],
           'sample_rate', ARGV[4])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'shadow', new)
return {'ok', new}
