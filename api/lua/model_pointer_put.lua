-- Point a scope (one tenant, or the global default) at a model: a new revision, atomically.
-- KEYS[1] pointer hash; ARGV[1] pointer doc JSON without its revision
-- Returns the new revision (every worker compares it with the one it loaded)
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[1])
return rev
