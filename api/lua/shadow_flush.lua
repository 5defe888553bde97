-- Add one worker's batched shadow counts to the tenant's report.
-- KEYS[1] shadow hash, KEYS[2] report hash, KEYS[3] samples list
-- ARGV[1] shadow version the counts belong to, ARGV[2] samples kept at most,
-- ARGV[3] n = number of (field, increment) pairs, ARGV[4 .. 3 + 2n] the pairs,
-- ARGV[4 + 2n ..] sample JSON documents (oldest first)
-- Returns 1 when added, 0 when that shadow is gone or was replaced (counts dropped).
if redis.call('HEXISTS', KEYS[1], 'doc') == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HINCRBY', KEYS[2], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
local first = 4 + 2 * n
if #ARGV >= first then
  for i = first, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
end
return 1
