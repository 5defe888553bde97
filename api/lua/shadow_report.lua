-- One consistent snapshot of the shadow policy's metadata, counts and samples.
-- KEYS[1] shadow hash, KEYS[2] report hash, KEYS[3] samples list
-- Returns {} without a shadow, else {version, installed_at, sample_rate, report, samples}
if redis.call('HEXISTS', KEYS[1], 'doc') == 0 then return {} end
local meta = redis.call('HMGET', KEYS[1], 'version', 'installed_at', 'sample_rate')
return {meta[1], meta[2], meta[3], redis.call('HGETALL', KEYS[2]),
        redis.call('LRANGE', KEYS[3], 0, -1)}
