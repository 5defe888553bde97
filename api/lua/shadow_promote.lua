-- Promote the shadow policy: in one step it becomes the live policy (next live version),
-- the shadow is cleared, and its final report is returned and removed.
-- KEYS as shadow_put.lua; ARGV[1] expected shadow version ('' = any), ARGV[2] expected live
-- version ('' = any), ARGV[3] now (ms)
-- Returns {'ok', live_version, shadow_version, installed_at, sample_rate, report, samples}
--       | {'missing', shadow_version} | {'shadow_conflict', shadow_version}
--       | {'conflict', live_version}
local sv = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
local doc = redis.call('HGET', KEYS[2], 'doc')
if not doc then return {'missing', sv} end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= sv then return {'shadow_conflict', sv} end
local lv = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= lv then return {'conflict', lv} end
local meta = redis.call('HMGET', KEYS[2], 'installed_at', 'sample_rate')
local report = redis.call('HGETALL', KEYS[3])
local samples = redis.call('LRANGE', KEYS[4], 0, -1)
local new = lv + 1
-- the stored doc carries neither version nor updated_at (as policy_put.lua stores it)
redis.call('HSET', KEYS[1], 'doc', doc, 'version', new, 'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'shadow')
redis.call('HDEL', KEYS[2], 'doc', 'installed_at', 'sample_rate')
redis.call('DEL', KEYS[3], KEYS[4])
return {'ok', new, sv, meta[1], meta[2], report, samples}
