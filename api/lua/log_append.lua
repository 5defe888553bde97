-- Append entries to one log stream and trim it by age and length (api/decision_log.py).
-- KEYS[1] the stream
-- ARGV[1] oldest id to keep (ms, MINID), ARGV[2] approximate maximum length,
-- ARGV[3..] entries: a field count n, then n field/value pairs, repeated
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local fields = {}
  for j = 1, 2 * n do fields[j] = ARGV[i + j] end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
  i = i + 2 * n + 1
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])
return 1
