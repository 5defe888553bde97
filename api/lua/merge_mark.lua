-- Merge step 1, on the source user: record where it is going (the tombstone), or undo that.
-- Bumping the revision makes any decision that read the source before the mark retry
-- (commit.lua's revision check) and, re-reading, follow the tombstone to the target.
-- KEYS[1] source prefs hash; ARGV[1] target user id, ARGV[2] 'mark' | 'unmark' | 'repoint'
-- ('repoint': an id merged earlier into ARGV[3], which has now moved on to ARGV[1], points
-- straight at ARGV[1], so tombstone chains stay one hop and erasing ARGV[3] breaks none)
-- Returns {'marked', target} (set now) | {'ok', target} (it was set already, or unmarked)
--       | {'elsewhere', the other target} (nothing changed)
local cur = redis.call('HGET', KEYS[1], 'moved_into')
if ARGV[2] == 'repoint' then
  if cur == ARGV[3] then redis.call('HSET', KEYS[1], 'moved_into', ARGV[1]) end
  return {'ok', ARGV[1]}
end
if ARGV[2] == 'unmark' then
  if cur == ARGV[1] then
    redis.call('HDEL', KEYS[1], 'moved_into')
    redis.call('HINCRBY', KEYS[1], 'rev', 1)
  end
  return {'ok', ARGV[1]}
end
if cur and cur ~= ARGV[1] then return {'elsewhere', cur} end
if cur then return {'ok', ARGV[1]} end
redis.call('HSET', KEYS[1], 'moved_into', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
return {'marked', ARGV[1]}
