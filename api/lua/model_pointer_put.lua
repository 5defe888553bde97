-- Point a scope (one tenant, or the global default) at a model: a new revision, atomically.
-- KEYS[1] pointer hash; ARGV[1] pointer doc JSON (without its revision), ARGV[2] its id
-- Returns the new revision. Workers compare the id (unique per write; a revision would
-- start again at 1 after the pointer was deleted)
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'id', ARGV[2])
return rev
